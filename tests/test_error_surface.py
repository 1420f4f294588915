"""Every error graphthrift raises on purpose is a ``GraphthriftError``, exported at the top."""

from __future__ import annotations

import inspect

import graphthrift
from graphthrift import errors
from graphthrift.embed import EmbeddingShapeError


def test_graphthrift_error_is_exported() -> None:
    assert graphthrift.GraphthriftError is errors.GraphthriftError
    assert "GraphthriftError" in graphthrift.__all__


def test_every_error_class_is_a_graphthrift_error() -> None:
    classes = [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
    ]
    assert classes
    assert [c.__name__ for c in classes if not issubclass(c, errors.GraphthriftError)] == []
    assert issubclass(EmbeddingShapeError, errors.GraphthriftError)
