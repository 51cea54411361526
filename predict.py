"""Segment new scans: ``python predict.py ckpt=PATH input=FILE_OR_DIR output=DIR``.

See docs/prediction.md; this is the `stroke-seg-predict` command
(`stroke_seg.cli.predict_main`), and everything happens in `stroke_seg.predict.run`.
"""

from stroke_seg.cli import predict_main

if __name__ == "__main__":
    predict_main()
