"""Quality metrics (perplexity, KL, top-1 agreement), the dense-reference cache, texts and `prunenet eval`."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from plans import outlier_plan

from prunenet.cli import main
from prunenet.evaluation.directories import evaluate_dirs, reference_source
from prunenet.evaluation.reference import DenseReference, compare_models, pruned_copy
from prunenet.evaluation.report import EvalInputError
from prunenet.evaluation.windows import split_windows, token_windows
from prunenet.source.loaders import load_causal_lm
from prunenet.texts import BUNDLED, GENRES, SOURCE, TEXTS, genre_text, reference_text, self_generated_text

VOCAB = 512  # tests/tiny_models.py


@pytest.fixture(scope="module")
def tiny(tiny_models):
    return load_causal_lm(tiny_models["llama"])


@pytest.fixture(scope="module")
def tiny_plan(tiny_models):
    return outlier_plan(tiny_models["llama"], ratio=0.4)


def random_windows(n: int = 3, seq_len: int = 48, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return split_windows(torch.randint(0, VOCAB, (n * seq_len,), generator=g), seq_len)


def test_split_windows_scores_every_token_once():
    windows = split_windows(list(range(10)), 4)
    assert [w.tolist() for w in windows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [w.numel() for w in split_windows(range(10), 4, max_tokens=9)] == [4, 4]  # a 1-token tail scores nothing
    with pytest.raises(EvalInputError):
        split_windows([7], 4)
    with pytest.raises(EvalInputError):
        split_windows(range(10), 1)


def test_model_against_itself_is_exact(tiny):
    report = compare_models(tiny, copy.deepcopy(tiny), random_windows())
    assert report.kl == 0.0 and report.kl_max == 0.0
    assert report.top1_agreement == 1.0
    assert report.pruned_ppl == report.dense_ppl and report.ppl_ratio == 1.0
    assert report.n_tokens == 3 * 47 and report.n_windows == 3


def test_perplexity_matches_hf_loss(tiny):
    windows = random_windows(seed=1)
    batch = torch.stack(windows)
    with torch.no_grad():
        loss = tiny(input_ids=batch, labels=batch).loss.item()  # mean over all shifted positions
    report = compare_models(tiny, tiny, windows)
    assert report.dense_ppl == pytest.approx(math.exp(loss), rel=1e-5)


def test_pruned_model_kl_matches_torch_kl_div(tiny, tiny_plan):
    windows = random_windows(seed=2)
    pruned = pruned_copy(tiny, tiny_plan)
    report = compare_models(tiny, pruned, windows, batch_size=2)
    batch = torch.stack(windows)
    with torch.no_grad():
        lp_d = F.log_softmax(tiny(batch).logits[:, :-1].float(), -1)
        lp_p = F.log_softmax(pruned(batch).logits[:, :-1].float(), -1)
    kl = F.kl_div(lp_p, lp_d, log_target=True, reduction="none").sum(-1)
    agree = (lp_d.argmax(-1) == lp_p.argmax(-1)).float().mean().item()
    nll_p = -lp_p.gather(-1, batch[:, 1:, None]).mean().item()
    assert report.kl > 1e-4
    assert report.kl == pytest.approx(kl.mean().item(), rel=1e-4)
    assert report.kl_max == pytest.approx(kl.max().item(), rel=1e-4)
    assert report.top1_agreement == pytest.approx(agree) and report.top1_agreement < 1.0
    assert report.pruned_ppl == pytest.approx(math.exp(nll_p), rel=1e-5)
    assert tiny.model.layers[0].mlp.down_proj.in_features == 192  # the dense model was not touched


def test_dense_reference_cache_equals_direct(tiny, tiny_plan):
    windows = random_windows(n=3, seed=3) + split_windows(range(100, 130), 30)  # ragged last window
    direct = compare_models(tiny, pruned_copy(tiny, tiny_plan), windows, batch_size=2)
    ref = DenseReference(tiny, windows, batch_size=2)
    cached = ref.compare_plan(tiny_plan)
    for key in ("n_tokens", "dense_ppl", "pruned_ppl", "kl", "kl_max", "top1_agreement", "pruned_top1_acc"):
        assert getattr(cached, key) == getattr(direct, key), key
    assert cached.meta["widths"] == tiny_plan.widths
    assert ref.ppl == direct.dense_ppl
    half = DenseReference(tiny, windows, batch_size=2, cache_dtype=torch.float16).compare_plan(tiny_plan)
    assert half.kl == pytest.approx(direct.kl, abs=1e-3)
    assert half.pruned_ppl == pytest.approx(direct.pruned_ppl, rel=1e-3)


def test_out_of_vocabulary_tokens_are_rejected(tiny):
    with pytest.raises(EvalInputError, match="vocabulary"):
        compare_models(tiny, tiny, [torch.tensor([1, 2, VOCAB])])


def test_reference_text_is_the_recorded_excerpt():
    data = Path(__file__).parents[1] / SOURCE["bundled"]
    assert hashlib.sha256(data.read_bytes()).hexdigest() == SOURCE["bundled_sha256"]
    full, short = reference_text("full"), reference_text("default")
    assert full == data.read_text(encoding="utf-8")
    assert full.startswith(short.rstrip("\n")) and 4000 < len(short) <= 8000 < len(full)
    assert "Gutenberg" not in full and "[Footnote" not in full
    with pytest.raises(ValueError):
        reference_text("wikitext")


def test_every_genre_is_its_recorded_excerpt():
    """Each report genre names a bundled file whose checksum is recorded, and its quick text is a slice of it."""
    assert set(GENRES) == set(BUNDLED) and GENRES[0] == "fiction"
    for genre in GENRES:
        data = Path(__file__).parents[1] / BUNDLED[genre]["bundled"]
        assert hashlib.sha256(data.read_bytes()).hexdigest() == BUNDLED[genre]["bundled_sha256"]
        whole = [n for n, (g, w) in TEXTS.items() if g == genre and w]
        assert len(whole) == 1 and reference_text(whole[0]) == data.read_text(encoding="utf-8")
        assert genre_text(genre, whole=True) == reference_text(whole[0])
        quick = genre_text(genre)
        assert quick in {reference_text(n) for n, (g, w) in TEXTS.items() if g == genre and not w}
        assert data.read_text(encoding="utf-8").startswith(quick.rstrip("\n")) and 4000 < len(quick) <= 8000
    technical = reference_text("technical-full")
    assert "sqlite3_open" in technical and not any(c in technical for c in "[]<>^")
    assert reference_text("technical") != reference_text("default")


# --------------------------------------------------------------------------- CLI on a tiny export


def _tiny_tokenizer(directory: Path) -> None:
    """A byte-level BPE of the tiny models' 512-token vocabulary, trained on the reference text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([reference_text("full")], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(directory)


@pytest.fixture(scope="module")
def tiny_export(tiny_models, tmp_path_factory) -> Path:
    from exporters.hf import write_hf_checkpoint

    root = tmp_path_factory.mktemp("quality")
    source = root / "dense"
    shutil.copytree(tiny_models["llama"], source)
    _tiny_tokenizer(source)
    plan = outlier_plan(source, ratio=0.3)
    assert not plan.is_uniform  # exercises trust_remote_code loading of modeling_pruned.py
    out = root / "pruned"
    out.mkdir()
    write_hf_checkpoint(source, plan, out)
    return out


def test_cli_eval_json(tiny_export):
    result = CliRunner().invoke(main, ["eval", str(tiny_export), "--json", "--seq-len", "128", "--max-tokens", "600"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n_tokens"] == 600 - 5 and data["n_windows"] == 5
    assert data["meta"]["reference"].endswith("dense") and data["meta"]["widths"]

    # the same numbers computed here from the two whole models: the bundled text's first 600 tokens, windows
    # of 128, each window's first token unscored
    from prunenet.source.loaders import load_tokenizer

    dense_dir = tiny_export.parent / "dense"
    ids = load_tokenizer(tiny_export, dense_dir)(reference_text("default"), add_special_tokens=False)["input_ids"]
    dense, pruned = load_causal_lm(dense_dir), load_causal_lm(tiny_export)
    agree, kl, nll_d, nll_p = [], [], [], []
    with torch.no_grad():
        for w in split_windows(ids[:600], 128):
            lp_d, lp_p = (F.log_softmax(m(w[None]).logits[0, :-1].float(), -1) for m in (dense, pruned))
            agree.append(lp_d.argmax(-1) == lp_p.argmax(-1))
            kl.append(F.kl_div(lp_p, lp_d, log_target=True, reduction="none").sum(-1))
            nll_d.append(-lp_d.gather(-1, w[1:, None]))
            nll_p.append(-lp_p.gather(-1, w[1:, None]))
    agreement = torch.cat(agree).float().mean().item()
    assert 0.2 < agreement < 1  # the export changed some predictions, not all: a value worth comparing
    assert data["top1_agreement"] == pytest.approx(agreement, abs=0.5 / 595)  # the same tokens agree
    assert data["kl"] == pytest.approx(torch.cat(kl).mean().item(), rel=1e-4)
    assert data["dense_ppl"] == pytest.approx(math.exp(torch.cat(nll_d).mean().item()), rel=1e-5)
    assert data["pruned_ppl"] == pytest.approx(math.exp(torch.cat(nll_p).mean().item()), rel=1e-5)
    assert data["ppl_ratio"] == pytest.approx(data["pruned_ppl"] / data["dense_ppl"])


def test_cli_eval_table_and_text_file(tiny_export, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text(reference_text("default")[:1500], encoding="utf-8")
    ref = tiny_export.parent / "dense"
    result = CliRunner().invoke(main, ["eval", str(tiny_export), "--text", str(text), "--reference", str(ref)])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.stdout and "KL" in result.stdout and "notes.txt" in result.stdout


def test_cli_eval_scores_the_bundled_technical_text(tiny_export):
    ref = str(tiny_export.parent / "dense")
    runs = {name: CliRunner().invoke(main, ["eval", str(tiny_export), "--text", name, "--reference", ref, "--json"])
            for name in ("default", "technical")}
    data = {}
    for name, result in runs.items():
        assert result.exit_code == 0, result.output
        data[name] = json.loads(result.stdout)
    assert data["technical"]["meta"]["text"] == "reference (technical)"
    assert data["technical"]["n_tokens"] != data["default"]["n_tokens"]
    assert data["technical"]["dense_ppl"] != data["default"]["dense_ppl"]


@pytest.mark.parametrize("args, message", [
    (["missing-dir"], "no such directory"),
    (["{out}", "--text", "no-such-file.txt"], "no such file"),
    (["{dense}"], "records no source model"),
    (["{out}", "--seq-len", "512"], "exceed the model's 256 positions"),
])
def test_cli_eval_bad_input_is_one_line(tiny_export, args, message):
    values = {"out": str(tiny_export), "dense": str(tiny_export.parent / "dense")}
    result = CliRunner().invoke(main, ["eval", *(a.format(**values) for a in args)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error:") and message in result.stderr


def test_reference_source_falls_back_to_the_plan(tiny_export, tmp_path):
    assert reference_source(tiny_export) == str(tiny_export.parent / "dense")
    copy_dir = tmp_path / "pruned"
    shutil.copytree(tiny_export, copy_dir)
    config = json.loads((copy_dir / "config.json").read_text())
    del config["pruning"]
    (copy_dir / "config.json").write_text(json.dumps(config))
    assert reference_source(copy_dir) == str(tiny_export.parent / "dense")
    (copy_dir / "prunenet-plan.json").unlink()
    assert reference_source(copy_dir) is None


def test_evaluate_dirs_on_self_generated_text(tiny_export):
    report = evaluate_dirs(tiny_export, self_generated=True, max_tokens=400, seq_len=100)
    assert report.meta["text"].startswith("self-generated") and report.n_tokens >= 390
    assert report.kl > 0 and report.dense_ppl < report.pruned_ppl


def test_every_genre_is_scored_in_one_pass_as_if_alone(tiny_export):
    """The export's report streams both models once for all genres; each genre's numbers are its own."""
    from prunenet.evaluation.directories import evaluate_genres
    from prunenet.texts import genre_text

    reports = evaluate_genres(tiny_export, device="cpu")
    assert list(reports) == list(GENRES)
    for genre, got in reports.items():
        alone = evaluate_dirs(tiny_export, text=genre_text(genre), device="cpu")
        assert got.meta["text"] == f"{genre} (quick slice)" and got.n_tokens == alone.n_tokens > 0
        for key in ("dense_ppl", "pruned_ppl", "kl", "top1_agreement"):
            assert getattr(got, key) == pytest.approx(getattr(alone, key), rel=1e-5), (genre, key)
    assert reports["fiction"].kl != reports["technical"].kl


# --------------------------------------------------------------------------- the real default model


@pytest.fixture(scope="module")
def smollm(default_model):
    from prunenet.source.loaders import load_tokenizer

    return load_causal_lm(default_model), load_tokenizer(default_model)


@pytest.mark.integration
@pytest.mark.slow
def test_default_model_reads_english_not_shuffled_tokens(smollm):
    model, tok = smollm
    windows = token_windows(tok, reference_text("default"), seq_len=512, max_tokens=512)
    shuffled = [w[torch.randperm(w.numel(), generator=torch.Generator().manual_seed(0))] for w in windows]
    ppl = DenseReference(model, windows).ppl
    ppl_shuffled = DenseReference(model, shuffled).ppl
    assert ppl < 100
    assert ppl_shuffled > 20 * ppl


@pytest.mark.integration
def test_default_model_knows_the_capital_of_france(smollm):
    model, tok = smollm
    ids = tok("The capital of France is", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, do_sample=False, max_new_tokens=8, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


@pytest.mark.integration
@pytest.mark.slow
def test_self_generated_text_is_deterministic(smollm):
    model, tok = smollm
    state = torch.random.get_rng_state()
    first = self_generated_text(model, tok, n_samples=2, n_tokens=8, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert first == self_generated_text(model, tok, n_samples=2, n_tokens=8, seed=0)
    assert first != self_generated_text(model, tok, n_samples=2, n_tokens=8, seed=1)
    assert first[0].startswith("The ") and all(len(tok(t)["input_ids"]) >= 8 for t in first)
