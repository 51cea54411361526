"""Train a stage: ``python train.py stage=zoom_in`` / ``stage=zoom_out ckpt=...``.

See README.md; this is the `stroke-seg-train` command (`stroke_seg.cli.train_main`), and
everything happens in `stroke_seg.train.run`.
"""

from stroke_seg.cli import train_main

if __name__ == "__main__":
    train_main()
