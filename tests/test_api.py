"""The public surface: every name in ``activeft.__all__`` is documented with a runnable example."""

import doctest

import pytest

import activeft


@pytest.mark.parametrize("name", activeft.__all__)
@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(120)
def test_public_names_have_docstring_examples(name, tmp_path, monkeypatch):
    obj = getattr(activeft, name)
    assert obj.__doc__ and "Examples" in obj.__doc__, f"{name} needs a docstring with an Examples section"
    monkeypatch.chdir(tmp_path)
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(obj, name, globs={}):
        runner.run(test)
    assert runner.failures == 0, f"the docstring example of {name} fails"
