"""Every package under syncengine/ is found, never listed by hand (a listed one is easy to
forget: the wheel once shipped without syncengine.pst), plus two that live beside it and
are mapped in pyproject.toml: the schema (migrations and JSON Schemas) and the demo."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["syncengine", "syncengine.*"]) + ["syncengine.schema", "syncengine.demo"])
