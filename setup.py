"""Which packages and page files the distribution holds; everything else about it is in
pyproject.toml.

pyproject.toml can either list packages one by one (a subpackage added later would be left out
of the wheel) or discover them under `stepstream/` (the page, kept in `web/` at the top of the
repository, is not there). So this file does both: every package under `stepstream/` is found
(a new one needs no entry here), and `web/` ships as `stepstream.web`, each of its folders a
package holding the page's files. `tests/test_wheel.py` checks that the wheel and the sdist hold
every module and page file.
"""

from setuptools import find_namespace_packages, setup

# Namespace discovery: a folder of modules without an __init__.py still ships.
CODE = find_namespace_packages(include=["stepstream", "stepstream.*"], exclude=["*.__pycache__"])
# web/ and its folders (views/): as packages, not bare data folders, which setuptools warns
# it may stop shipping.
PAGE = ["stepstream.web", *(f"stepstream.web.{name}" for name in find_namespace_packages(where="web"))]
PAGE_FILES = ["*.html", "*.js", "*.css", "*.svg"]

setup(
    packages=[*CODE, *PAGE],
    package_dir={"stepstream.web": "web"},
    package_data={name: PAGE_FILES for name in PAGE},
)
