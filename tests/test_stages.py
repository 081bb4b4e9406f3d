"""The stage table: a stage declared once reaches the API, the command line, the configs and a pipeline."""

import json

import pytest

import activeft
from activeft import stages
from activeft.cli import main
from activeft.config import load_config
from activeft.errors import ConfigError, ParameterError
from activeft.io import protocol, storage
from activeft.params import TEXT, integer, one_of
from activeft.pipeline import Pipeline

NOTE = protocol.Kind("note", "note.json", r"note\.json")


@pytest.fixture
def note(monkeypatch):
    """A throwaway stage, registered for this test only: its module would be these lines."""
    monkeypatch.setattr(stages, "_STAGES", dict(stages._STAGES))

    @stages.stage({"source": TEXT, "output": TEXT, "words": integer(1), "tone": one_of("dry", "warm")}, name="note",
                  output=NOTE,
                  command=stages.Command("note", arguments=("source",), summary=lambda r, v: f"noted {r} words"),
                  section=stages.Section("note", fixed=("source",), extra={"output": (str, "{output}/note")}))
    def write_note(source: str, output: str, *, words: int = 3, tone: str = "dry") -> int:
        """Write a note about a source.

        Parameters
        ----------
        source : str
            What the note is about.
        output : str
            Directory of the note.
        words : int, default=3
            Length of the note.
        tone : str, default="dry"
            How it reads.
        """
        with protocol.writing(output, NOTE, {"words": words, "tone": tone}) as out:
            out.commit({"source": source, "words": words, "tone": tone})
        return words

    return write_note


def test_a_new_stage_reaches_api_cli_config_and_pipeline(note, tmp_path, capsys):
    # the public API
    assert activeft.write_note is note
    assert note("pool", str(tmp_path / "a"), words=2) == 2
    with pytest.raises(ParameterError, match="The 'words' parameter of note must be an int >= 1. Got 0 instead."):
        note("pool", str(tmp_path / "b"), words=0)
    assert not storage.exists(str(tmp_path / "b"))  # refused before anything was written

    # the command line: options, choices and help from the declaration
    assert main(["note", "pool", "--output", str(tmp_path / "c"), "--words", "4", "--tone", "warm"]) == 0
    assert "noted 4 words" in capsys.readouterr().out
    assert json.loads((tmp_path / "c" / "note.json").read_text())["tone"] == "warm"
    assert main(["note", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Write a note about a source." in text and "--words" in text and "One of: dry, warm." in text
    assert main(["note", "pool", "--output", str(tmp_path / "d"), "--tone", "cold"]) == 1
    assert "The 'tone' parameter of note must be one of dry, warm. Got 'cold' instead." in capsys.readouterr().err

    # the configs: a section typed from the declaration
    config = tmp_path / "c.yaml"
    config.write_text(f"output: {tmp_path}/run\nnote: {{words: 5}}\n")
    cfg = load_config(str(config))
    assert (cfg.note.words, cfg.note.tone, cfg.note.output) == (5, "dry", f"{tmp_path}/run/note")
    with pytest.raises(ConfigError, match="config key 'note.words': must be an int >= 1"):
        load_config(str(config), ["note.words=0"])

    # its pipeline line
    p = Pipeline(cfg)
    n = cfg.note
    done = p.stage("note", lambda: note("pool", **n.model_dump()), storage.join(n.output, NOTE.marker), {"note": n})
    assert done == 5
    assert (tmp_path / "run" / "note" / "note.json").exists()


def test_every_stage_is_declared_once_and_public():
    names = [s.name for s in stages.list_stages()]
    assert names[:4] == ["embed", "import_embeddings", "dedup", "select"] and len(set(names)) == len(names)
    for entry in stages.list_stages():
        assert getattr(activeft, entry.fn.__name__) is entry.fn
        assert entry.fn.__name__ in activeft.__all__
        assert set(entry.params) <= set(entry.fn.__wrapped__.__code__.co_varnames)
    with pytest.raises(ValueError, match="registered twice"):
        stages.register(stages.list_stages()[0])
    with pytest.raises(ParameterError, match="unknown stage 'selekt'.*did you mean 'select'"):
        stages.get_stage("selekt")
