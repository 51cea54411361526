"""Package layout that pyproject.toml cannot express: ship the top-level ``conf/`` inside the
package as ``stroke_seg.conf``, every config group with it, so that the installed commands
(``stroke-seg-train`` ...) find their Hydra configs outside a checkout
(`stroke_seg.config.config_path`). Everything else is in pyproject.toml.
"""

from setuptools import find_namespace_packages, find_packages, setup

CONF = [
    "stroke_seg.conf",
    *(f"stroke_seg.conf.{group}" for group in find_namespace_packages("conf")),
]

setup(
    packages=[*find_packages(include=["stroke_seg", "stroke_seg.*"]), *CONF],
    package_dir={"stroke_seg.conf": "conf"},
    package_data={package: ["*.yaml"] for package in CONF},
)
