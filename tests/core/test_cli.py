"""The CLI's conventions: --help, exit codes, one-line errors on stderr, data on stdout."""

import subprocess
import sys

import pytest

import layered
from layered.cli import main


def test_help_and_version(capsys):
    # each command's help names its usage line, words of its own description and its options
    expected = {
        ("--help",): ["usage: layered", "behind one Pipeline", "index", "ask", "tune", "serve", "--version"],
        ("index", "--help"): ["usage: layered index", "chunk and embed PATH", "--out", "--chunk-size", "--hybrid"],
        ("ask", "--help"): ["usage: layered ask", "Answer QUESTION with the pipeline saved in DIR", "--max-new-tokens", "--json"],
        ("demo", "--help"): ["usage: layered demo", "answer sample questions with citations", "--rebuild", "medical,support"],
        ("--version",): [f"layered {layered.__version__}"],
    }
    for argv, needles in expected.items():
        with pytest.raises(SystemExit) as e:
            main(list(argv))
        assert e.value.code == 0
        out = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal width
        for needle in needles:
            assert needle in out, f"{' '.join(argv)}: {needle!r} missing from {out!r}"


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2


def _one_line_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("layered: error: ")
    return err[-1]


def test_missing_saved_pipeline(capsys, tmp_path):
    line = _one_line_error(capsys, ["-q", "ask", str(tmp_path / "nope"), "hi"])
    assert "does not exist" in line


def test_index_missing_path_and_bad_encoding_write_nothing(capsys, tmp_path):
    out = tmp_path / "idx"
    assert "no such file" in _one_line_error(capsys, ["-q", "index", str(tmp_path / "missing.jsonl"), "--out", str(out)])
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe broken")
    assert "not valid utf-8" in _one_line_error(capsys, ["-q", "index", str(bad), "--out", str(out)])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no documents" in _one_line_error(capsys, ["-q", "index", str(empty), "--out", str(out)])
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "empty"]


def test_index_never_replaces_a_folder_of_the_users_files(capsys, tmp_path):
    docs = tmp_path / "docs.txt"
    docs.write_text("A real document about the product.", encoding="utf-8")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_bytes(b"mine")
    assert "did not save" in _one_line_error(capsys, ["-q", "index", str(docs), "--out", str(mine)])
    assert [p.name for p in mine.iterdir()] == ["keep.txt"] and (mine / "keep.txt").read_bytes() == b"mine"


def test_entry_point_exit_code():
    proc = subprocess.run([sys.executable, "-m", "layered.cli", "ask", "/nonexistent/dir", "q"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith("layered: error:")


def test_bad_prompt_variables_are_one_line_errors(capsys, tmp_path):
    assert "NAME=VALUE" in _one_line_error(capsys, ["-q", "ask", str(tmp_path), "q", "--var", "novalue"])
    assert "not a prompt variable" in _one_line_error(capsys, ["-q", "ask", str(tmp_path), "q", "--var", "k=3"])


def test_max_new_tokens_is_checked_by_the_generator(capsys, tmp_path, tiny_generator):
    # The saved generator's window is 1024 tokens: a budget that fills it is refused before any answer.
    layered.Pipeline(generator=tiny_generator).save(tmp_path / "p")
    assert "must exceed max_new_tokens (1024)" in _one_line_error(capsys, ["-q", "ask", str(tmp_path / "p"), "q", "--max-new-tokens", "1024"])
    assert "at least 1, got 0" in _one_line_error(capsys, ["-q", "ask", str(tmp_path / "p"), "q", "--max-new-tokens", "0"])


def test_llamacpp_only_serve_options_are_refused_for_another_backend(tiny_generator):
    from layered.errors import ConfigError
    from layered.generation.backends import set_llamacpp_options
    from layered.generation.llamacpp_generator import LlamaCppGenerator

    for options, flag in (({"parallel": 4}, "--parallel"), ({"ignore_eos": True}, "--ignore-eos")):
        with pytest.raises(ConfigError, match=f"{flag} is a llama.cpp backend option"):
            set_llamacpp_options(tiny_generator, **options)
    set_llamacpp_options(tiny_generator)  # nothing asked: nothing to refuse
    served = LlamaCppGenerator(parallel=1)  # loads nothing until first use
    set_llamacpp_options(served, parallel=4, ignore_eos=True)
    assert (served.parallel, served.ignore_eos) == (4, True)
