"""`graphc demo --model char_gpt|gru`: a character language model trained in C on the standard
library's source (graphc/tools/corpus.py), then sampled by the emitted C's NAME_generate."""
from __future__ import annotations

import math

import numpy as np
import pytest

from graphc.tools import corpus
from graphc.tools.demo import main
from graphc.tools.demo_text import run


def test_corpus_is_the_standard_library_source_in_a_96_symbol_vocabulary():
    text = corpus.stdlib_text(50_000)
    assert len(text) == 50_000 and "def " in text and "import " in text
    ids = corpus.encode(text + "\tä")
    assert ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < len(corpus.VOCAB) == 96
    assert corpus.decode(ids[-5:]) == "    ?"          # a tab is four spaces, other characters '?'
    assert corpus.decode(corpus.encode("x = 1\n")) == "x = 1\n"
    train, val = corpus.split(ids)
    x, y = corpus.windows(train, 16, 5, np.random.default_rng(0))
    assert x.shape == y.shape == (5, 16) and (x[:, 1:] == y[:, :-1]).all()
    base = corpus.unigram_loss(train, val)
    assert 2.0 < base < math.log(96)          # frequencies beat the uniform guess


@pytest.mark.parametrize("model", ["char_gpt", "gru"])
def test_demo_text_trains_below_the_unigram_baseline_samples_and_exports(tmp_path, model):
    lines = []
    r = run(model, steps=40, batch_size=8, out=tmp_path, interval=20, sample_chars=30, write=lines.append)
    text = "\n".join(lines)
    assert "unigram baseline" in text and "sampled by the emitted C" in text
    steps = [h for h in r["history"] if h[1] is not None]
    assert [h[0] for h in steps] == [20, 40]
    assert r["history"][-1][2] < r["history"][0][2]            # the held-out loss fell
    assert len(r["sample"]) == len("def ") + 30 and r["sample"].startswith("def ")
    assert (tmp_path / f"{model}.c").is_file() and (tmp_path / "main.c").is_file()
    assert f"{model}_generate(" in (tmp_path / f"{model}.h").read_text()


def test_demo_cli_takes_the_text_models_and_refuses_bad_steps(tmp_path, capsys):
    assert main(["--model", "gru", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "--steps" in capsys.readouterr().err
