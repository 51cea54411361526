"""``python -m stroke_seg.bench``: see `stroke_seg.bench`."""

from stroke_seg.bench.cli import main

if __name__ == "__main__":
    main()
