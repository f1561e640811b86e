"Vocabulary reduction and cross-vocabulary distillation (hypercompress.vocab, hypercompress.xvocab) on a tiny byte-level BPE: checks, round trips, refinement, the projection kernel, the cache."
import json
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
from hypercompress.xvocab import (cache_xvocab_targets, project_next_symbol, spell_positions, spelling_table,
                                  teacher_candidates, xvocab_topk)

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
    table = spelling_table(segmentations, len(vocab))
    assert torch.equal(spell_positions(teacher_ids, table)[0], student_ids)


def test_refinement_violations_reported(teacher_tokenizer, corpus):
    other = train_byte_level_bpe(corpus[-20_000:], 300)  # merges that are not a prefix of the teacher's
    fake = StudentVocab(other, torch.zeros(len(other), dtype=torch.long), 40, "bpe")
    with pytest.raises(ValueError, match="not the teacher's spelled out"): check_refinement(fake, teacher_tokenizer, corpus[:50_000])
    lacking = rebuilt(teacher_tokenizer, lambda b: b["model"]["vocab"].pop("Ĉ"))  # byte 0x08
    assert missing_bytes(lacking) == [8]
    with pytest.raises(ValueError, match=r"bytes \['0x8'\] that the teacher's vocabulary lacks"):
        check_refinement(byte_vocab(lacking), lacking, "a\x08b")


def brute_force(p, spellings, prefix):
    "Next-symbol distribution after `prefix` by enumerating every teacher token, tokens ending at the prefix dropped."
    m, q = len(prefix), {}
    for t, spelling in enumerate(spellings):
        if len(spelling) > m and spelling[:m] == prefix: q[spelling[m]] = q.get(spelling[m], 0.0) + p[t]
    total = sum(q.values())
    return {s: v / total for s, v in q.items()}


@pytest.mark.parametrize("seed", range(5))
def test_projection_matches_brute_force_on_random_vocabularies(seed):
    rng = random.Random(seed)
    n_symbols = rng.randint(2, 5)
    spellings = [[s] for s in range(n_symbols)] + [[rng.randrange(n_symbols) for _ in range(rng.randint(1, 5))] for _ in range(12)]
    table = spelling_table(spellings, n_symbols)
    p = torch.softmax(2 * torch.randn(len(spellings), generator=torch.Generator().manual_seed(seed), dtype=torch.float64), 0)
    rows = [(t, m) for t, s in enumerate(spellings) for m in range(len(s))]
    current, emitted = torch.tensor([t for t, _ in rows]), torch.tensor([m for _, m in rows])
    q = project_next_symbol(torch.arange(len(spellings)).expand(len(rows), -1), p.expand(len(rows), -1), current, emitted, table)
    for row, (t, m) in enumerate(rows):
        expected = brute_force(p.tolist(), spellings, spellings[t][:m])
        assert q[row].tolist() == pytest.approx([expected.get(s, 0.0) for s in range(n_symbols)], abs=1e-12)


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
                                        k=8, temperature=1.5, teacher_top_k=16, teacher_seq_len=64, progress=False)
    cache = load_teacher_cache(path)
    n_windows = (len(check_refinement(vocab, teacher_tokenizer, text)[1]) - 1) // 48
    assert torch.equal(cache.input_ids.long(), chunks.input_ids) and chunks.input_ids.shape == (n_windows, 48)
    assert (cache.indices.shape, cache.logprobs.shape, cache.rest_logprobs.shape) == ((n_windows, 48, 8), (n_windows, 48, 8), (n_windows, 48))
    assert (cache.indices.dtype, cache.logprobs.dtype, cache.vocab_size, cache.temperature) == (torch.int32, torch.float16, len(vocab), 1.5)
    mass = cache.logprobs.float().exp().sum(-1) + cache.rest_logprobs.exp()
    assert torch.allclose(mass, torch.ones_like(mass), atol=5e-3)
    # with every student symbol kept, the symbol that actually follows each position always has target mass
    full, full_path = cache_xvocab_targets(teacher, teacher_tokenizer, vocab, text, tmp_path / "full.safetensors", seq_len=48,
                                           k=len(vocab), temperature=1.5, teacher_top_k=16, teacher_seq_len=64, progress=False)
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
    with pytest.raises(ValueError, match="k=300 must be between 1 and V_S=259"):
        cache_xvocab_targets(teacher, teacher_tokenizer, vocab, SAMPLE * 3, tmp_path / "b.safetensors", seq_len=16, k=300, progress=False)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_teacher_candidates_include_the_actual_token(teacher_tokenizer):
    teacher = tiny_llama(len(teacher_tokenizer), teacher_tokenizer, seed=3)
    ids = torch.tensor(teacher_tokenizer(SAMPLE * 4)["input_ids"])
    candidate_ids, candidate_probs = teacher_candidates(teacher, ids, teacher_tokenizer.bos_token_id, 2, seq_len=20, progress=False)
    assert candidate_ids.shape == (len(ids), 2)
    assert (candidate_ids == ids[:, None]).any(-1).all()
    assert torch.allclose(candidate_probs.sum(-1), torch.ones(len(ids)))


def test_xvocab_topk_rest_bucket():
    table = spelling_table([[0], [1], [0, 1], [2]], 3)
    indices, logprobs, rest = xvocab_topk(torch.arange(4).expand(2, 4), torch.tensor([[0.1, 0.2, 0.3, 0.4]] * 2),
                                          torch.tensor([2, 3]), table, 2, k=1)
    # position 0: after 'a' of token 2 → 'b' (token 0 ends: dropped); position 1: boundary → a .4, b .2, c .4
    assert indices[:, 0].tolist()[0] == 1 and logprobs[0, 0].exp().item() == pytest.approx(1.0)
    assert rest[1].exp().item() == pytest.approx(0.6)
