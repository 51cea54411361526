"""Evaluate: ``python evaluate.py ckpt=PATH`` or ``predictions=DIR labels=DIR``.

See docs/evaluation.md; this is the `stroke-seg-evaluate` command
(`stroke_seg.cli.evaluate_main`), and everything happens in `stroke_seg.evaluate.run`.
"""

from stroke_seg.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
