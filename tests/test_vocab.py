"Vocabulary reduction and cross-vocabulary distillation (hypercompress.vocab, hypercompress.xvocab) on a tiny byte-level BPE: checks, round trips, refinement, the projection kernel, the cache."
import functools
import json
import math
import random

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from hypercompress.config import load_config
from hypercompress.data import DataError, load_text
from hypercompress.distill import distill, load_teacher_cache
from hypercompress.models import byte_tokenizer
from hypercompress.vocab import (StudentVocab, byte_vocab, check_byte_level_bpe, check_refinement, merges_for_vocab_size,
                                 missing_bytes, student_vocab, teacher_segmentations, train_byte_level_bpe, truncated_bpe)
from hypercompress.xvocab import (TargetsError, cache_xvocab_targets, check_targets, covering_beam,
                                  prefix_probability_by_enumeration, spelling_trie, targets_report)

SAMPLE = "ROMEO: But, soft! what light through yonder window breaks?\nJuliet: Ay me! — naïve café, 東京 🙂\n\n  spaces  "


@pytest.fixture(scope="module")
def corpus():
    return load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def teacher_tokenizer(corpus):
    return train_byte_level_bpe(corpus[:20_000], 400)


def rebuilt(tokenizer, edit):
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    edit(backend)
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(backend)))


@pytest.mark.parametrize("n_merges", [0, 1, 57, 140])
def test_student_tokenizer_save_and_reload(teacher_tokenizer, tmp_path, n_merges):
    vocab = truncated_bpe(teacher_tokenizer, n_merges)
    vocab.tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in (SAMPLE, "", "<|bos|>x", "a" * 50):
        assert reloaded(text)["input_ids"] == vocab.tokenizer(text)["input_ids"]
    assert reloaded.decode(reloaded(SAMPLE)["input_ids"]) == SAMPLE
    assert len(reloaded) == len(vocab) == 256 + n_merges + 3
    for role in ("bos", "eos", "pad", "unk"):
        assert getattr(reloaded, f"{role}_token_id") == getattr(vocab.tokenizer, f"{role}_token_id") is not None


def test_byte_vocab_ids_are_bytes(teacher_tokenizer):
    vocab = byte_vocab(teacher_tokenizer)
    assert vocab.tokenizer(SAMPLE)["input_ids"] == list(SAMPLE.encode("utf-8"))
    assert vocab.kind == "bytes" and vocab.n_merges == 0 and len(vocab) == 259
    assert vocab.teacher_ids.tolist() == [teacher_tokenizer.convert_tokens_to_ids(t) for t in vocab.tokenizer.convert_ids_to_tokens(list(range(259)))]
    same = byte_vocab(byte_tokenizer())  # the tiny models' tokenizer is its own byte vocabulary
    assert same.tokenizer.get_vocab() == byte_tokenizer().get_vocab()


@pytest.mark.parametrize("make, message", [
    (lambda toy: PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))),
     "model is WordLevel, not BPE"),
    (lambda toy: PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.Unigram([("a", -1.0), ("b", -2.0)], 0, False))),
     "model is Unigram, not BPE"),
    (lambda toy: rebuilt(toy, lambda b: b.update(pre_tokenizer={"type": "Whitespace"})), "no ByteLevel pre-tokenizer"),
    (lambda toy: rebuilt(toy, lambda b: b.update(decoder=None)), "no ByteLevel decoder"),
    (lambda toy: rebuilt(toy, lambda b: b["model"].update(dropout=0.1)), "dropout"),
    (lambda toy: rebuilt(toy, lambda b: b["model"]["merges"].reverse()), "which no earlier merge makes"),
    (lambda toy: object(), "not a fast tokenizer"),
])
def test_not_byte_level_bpe_refused(teacher_tokenizer, make, message):
    with pytest.raises(ValueError, match=message): check_byte_level_bpe(make(teacher_tokenizer))
    with pytest.raises(ValueError, match=message): byte_vocab(make(teacher_tokenizer))


def test_bad_sizes(teacher_tokenizer):
    with pytest.raises(ValueError, match="between 0 and the teacher's 140 merges"): truncated_bpe(teacher_tokenizer, -1)
    with pytest.raises(ValueError, match="between 0 and the teacher's 140 merges"): truncated_bpe(teacher_tokenizer, 141)
    with pytest.raises(ValueError, match="below the byte vocabulary's 259"): student_vocab(teacher_tokenizer, "bpe", 100)
    with pytest.raises(ValueError, match="needs a vocab_size"): student_vocab(teacher_tokenizer, "bpe")
    with pytest.raises(ValueError, match="must be one of"): student_vocab(teacher_tokenizer, "words", 300)
    assert [merges_for_vocab_size(teacher_tokenizer, n) for n in (259, 260, 398, 399, 10**6)] == [0, 1, 139, 140, 140]


@pytest.mark.parametrize("n_merges", [0, 3, 30, 100, 140])
def test_refinement_on_tinyshakespeare(teacher_tokenizer, corpus, n_merges):
    vocab = truncated_bpe(teacher_tokenizer, n_merges)
    text = corpus[-100_000:]  # text the toy tokenizer was not trained on
    teacher_ids, student_ids = check_refinement(vocab, teacher_tokenizer, text)
    segmentations = teacher_segmentations(vocab, teacher_tokenizer)
    assert sum(len(segmentations[t]) for t in teacher_ids.tolist()) == len(student_ids)
    assert torch.equal(torch.tensor([s for t in teacher_ids.tolist() for s in segmentations[t]]), student_ids)


def test_refinement_violations_reported(teacher_tokenizer, corpus):
    other = train_byte_level_bpe(corpus[-20_000:], 300)  # merges that are not a prefix of the teacher's
    fake = StudentVocab(other, torch.zeros(len(other), dtype=torch.long), 40, "bpe")
    with pytest.raises(ValueError, match="not the teacher's spelled out"): check_refinement(fake, teacher_tokenizer, corpus[:50_000])
    lacking = rebuilt(teacher_tokenizer, lambda b: b["model"]["vocab"].pop("Ĉ"))  # byte 0x08
    assert missing_bytes(lacking) == [8]
    with pytest.raises(ValueError, match=r"bytes \['0x8'\] that the teacher's vocabulary lacks"):
        check_refinement(byte_vocab(lacking), lacking, "a\x08b")


def random_lm(n_tokens, seed):
    "A token-level LM with a fixed random next-token distribution for every context (deterministic per context)."
    @functools.lru_cache(None)
    def next_logprobs(tokens):
        generator = torch.Generator().manual_seed(hash((seed, *tokens)) % 2**31)
        return torch.log_softmax(2 * torch.randn(n_tokens, generator=generator, dtype=torch.float64), 0)
    return next_logprobs


@pytest.mark.parametrize("seed", range(6))
def test_covering_beam_matches_enumeration_on_random_vocabularies(seed):
    rng = random.Random(seed)
    n_symbols = rng.randint(2, 4)
    spellings = [[s] for s in range(n_symbols)] + [[rng.randrange(n_symbols) for _ in range(rng.randint(2, 4))] for _ in range(8)] + [[]]
    trie = spelling_trie(spellings, n_symbols)
    lm = random_lm(len(spellings), seed)
    symbols = [rng.randrange(n_symbols) for _ in range(7)]
    rows = covering_beam(lm, trie, symbols)
    assert torch.allclose(rows.sum(-1), torch.ones(len(symbols) + 1, dtype=torch.float64))
    for n in range(1, len(symbols) + 1):  # every prefix: the product of the conditionals is the marginal
        product = math.prod(float(rows[i, s]) for i, s in enumerate(symbols[:n]))
        assert product == pytest.approx(prefix_probability_by_enumeration(lm, spellings, symbols[:n]), rel=1e-9)


def tiny_llama(vocab_size, tokenizer, seed):
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("n_merges", [0, 20])
def test_cache_round_trip_and_distill(teacher_tokenizer, corpus, tmp_path, n_merges):
    vocab = truncated_bpe(teacher_tokenizer, n_merges)
    teacher = tiny_llama(len(teacher_tokenizer), teacher_tokenizer, seed=1)
    text = corpus[:2_000]
    chunks, path = cache_xvocab_targets(teacher, teacher_tokenizer, vocab, text, tmp_path / "c.safetensors", seq_len=48,
                                        k=8, temperature=1.5, progress=False, window=200)
    cache = load_teacher_cache(path)
    n_windows = (len(check_refinement(vocab, teacher_tokenizer, text)[1]) - 1) // 48
    assert torch.equal(cache.input_ids.long(), chunks.input_ids) and chunks.input_ids.shape == (n_windows, 48)
    assert (cache.indices.shape, cache.logprobs.shape, cache.rest_logprobs.shape) == ((n_windows, 48, 8), (n_windows, 48, 8), (n_windows, 48))
    assert (cache.indices.dtype, cache.logprobs.dtype, cache.vocab_size, cache.temperature) == (torch.int32, torch.float16, len(vocab), 1.5)
    mass = cache.logprobs.float().exp().sum(-1) + cache.rest_logprobs.exp()
    assert torch.allclose(mass, torch.ones_like(mass), atol=5e-3)
    # with every student symbol kept, the symbol that actually follows each position always has target mass
    full, full_path = cache_xvocab_targets(teacher, teacher_tokenizer, vocab, text, tmp_path / "full.safetensors", seq_len=48,
                                           k=len(vocab), temperature=1.5, progress=False, window=200)
    student_ids = check_refinement(vocab, teacher_tokenizer, text)[1]
    n = full.input_ids.numel()
    targets = load_teacher_cache(full_path)
    dense = torch.zeros(n, len(vocab)).scatter(1, targets.indices.view(n, -1).long(), targets.logprobs.view(n, -1).float().exp())
    assert (dense[torch.arange(n), student_ids[1:n + 1]] > 1e-6).all()
    assert torch.allclose(dense.sum(-1), torch.ones(n), atol=5e-3)
    student = tiny_llama(len(vocab), vocab.tokenizer, seed=2)
    config = load_config(None, overrides=["distillation.token_budget=96", "distillation.batch_size=2", "distillation.temperature=1.5",
                                          "branches.kv.enabled=false", "distillation.learning_rate=1e-3"])
    result = distill(str(path), student, vocab.tokenizer, chunks, config, progress=False, log=lambda *_: None)
    assert result.tokens == 96 and all(torch.isfinite(torch.tensor(row["loss"])) for row in result.curve)
    wrong_temperature = load_config(None, overrides=["distillation.token_budget=96", "branches.kv.enabled=false"])
    with pytest.raises(ValueError, match="temperature"): distill(path, student, vocab.tokenizer, chunks, wrong_temperature, progress=False)


def test_cache_bad_input(teacher_tokenizer, tmp_path):
    vocab = byte_vocab(teacher_tokenizer)
    teacher = tiny_llama(len(teacher_tokenizer), teacher_tokenizer, seed=1)
    with pytest.raises(DataError, match="fewer than seq_len"):
        cache_xvocab_targets(teacher, teacher_tokenizer, vocab, "too short", tmp_path / "a.safetensors", seq_len=64, progress=False)
    with pytest.raises(ValueError, match="k=300 must be between 1 and the student vocabulary's 259"):
        cache_xvocab_targets(teacher, teacher_tokenizer, vocab, SAMPLE * 3, tmp_path / "b.safetensors", seq_len=16, k=300, progress=False)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_leak_check_reads_its_own_cache(teacher_tokenizer, corpus, tmp_path):
    vocab = byte_vocab(teacher_tokenizer)
    teacher = tiny_llama(len(teacher_tokenizer), teacher_tokenizer, seed=1)
    _, path = cache_xvocab_targets(teacher, teacher_tokenizer, vocab, corpus[:3_000], tmp_path / "c.safetensors", seq_len=64,
                                   k=len(vocab), progress=False, window=256)
    report = targets_report(path, check_bytes=500)
    assert report["check_bytes"] >= 500 and report["outside_top_k"] == 0
    assert report["targets_bpb"] == pytest.approx(report["full_targets_bpb"], abs=1e-3)  # every symbol kept: the same rows
    teacher_bpb = report["teacher_bpb_on_targets_slice"]
    assert check_targets(report, leak_tolerance=1.0) is report
    with pytest.raises(TargetsError, match=rf"score {teacher_bpb - 0.5:.4f} BPB .* better than the teacher's own {teacher_bpb:.4f} by more than 0.02"):
        check_targets(dict(report, targets_bpb=teacher_bpb - 0.5))
    with pytest.raises(TargetsError, match=rf"score {teacher_bpb + 0.5:.4f} BPB .* worse than the teacher's own {teacher_bpb:.4f} by more than 0.1"):
        check_targets(dict(report, full_targets_bpb=teacher_bpb + 0.5), leak_tolerance=1.0)
    with pytest.raises(TargetsError, match="temperature 1"): check_targets(dict(report, temperature=2.0), leak_tolerance=10)
    _, hot = cache_xvocab_targets(teacher, teacher_tokenizer, vocab, corpus[:3_000], tmp_path / "t.safetensors", seq_len=64,
                                  k=8, temperature=2.0, progress=False, window=256)
    assert targets_report(hot, 500)["temperature"] == 2.0
    with pytest.raises(TargetsError, match="no leak-check data"): targets_report(_plain_cache(tmp_path))


def _plain_cache(tmp_path):
    from hypercompress.teacher_cache import CACHE_FORMAT, save_teacher_cache
    tensors = dict(input_ids=torch.zeros(1, 4, dtype=torch.int32), indices=torch.zeros(1, 4, 2, dtype=torch.int32),
                   logprobs=torch.zeros(1, 4, 2, dtype=torch.float16), rest_logprobs=torch.zeros(1, 4))
    return save_teacher_cache(tensors, dict(format=CACHE_FORMAT, temperature="1.0", vocab_size="8"), tmp_path / "plain.safetensors")


def test_removed_teacher_top_k_is_named():
    from hypercompress.config import ConfigError
    with pytest.raises(ConfigError, match="distillation.teacher_top_k was removed: .*distillation.cross_vocab"):
        load_config(None, ["distillation.teacher_top_k=64"])
