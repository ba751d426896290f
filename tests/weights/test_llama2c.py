"""llama2.c: reader, tokenizer, and the conversion to LlamaForCausalLM against a reference forward pass."""

from __future__ import annotations

import struct

import pytest
import torch

from lowrank_lab.weights import CorruptCheckpointError, load_hf_model, open_source
from lowrank_lab.weights.llama2c import (
    Llama2cCheckpoint,
    Llama2cTokenizer,
    convert_to_hf,
    hf_state_dict,
    permute_rotary,
    to_hf_model,
)

from .llama2c_reference import greedy, reference_logits, write_random_llama2c, write_tokenizer

WMODULES = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def random_ckpt(request, tmp_path):
    path = tmp_path / "random.bin"
    arrays = write_random_llama2c(path, shared=request.param, seed=7)
    return path, arrays, request.param


def test_reader_header_and_targets(random_ckpt):
    path, arrays, shared = random_ckpt
    ck = Llama2cCheckpoint(path)
    c = ck.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size) == (32, 48, 2, 4, 2, 40)
    assert c.shared_classifier is shared
    src = open_source(path)
    assert src.family == "llama2c" and src.name == "random"
    assert [(i.layer, i.module) for i in src.targets()] == [(lay, m) for lay in range(2) for m in WMODULES]
    for wm in src:
        assert torch.equal(wm.weight, arrays[wm.module][wm.layer])
    out = ck.array("output")
    assert torch.equal(out, arrays["tok_embeddings"] if shared else arrays["output"])
    assert src.spec.num_parameters() == sum(v.numel() for k, v in arrays.items() if not k.startswith("freq"))


def test_permute_rotary_maps_interleaved_pairs_to_halves():
    hs, heads, dim = 6, 2, 3
    w = torch.arange(heads * hs * dim, dtype=torch.float32).reshape(heads * hs, dim)
    p = permute_rotary(w, heads)
    for h in range(heads):
        for i in range(hs // 2):
            assert torch.equal(p[h * hs + i], w[h * hs + 2 * i])
            assert torch.equal(p[h * hs + hs // 2 + i], w[h * hs + 2 * i + 1])


def test_converted_model_matches_reference_forward(random_ckpt):
    path, _, _ = random_ckpt
    ck = Llama2cCheckpoint(path)
    tokens = [1, 5, 9, 33, 2, 17, 0, 39, 12, 12, 4]
    model = to_hf_model(ck)
    with torch.no_grad():
        hf = model(torch.tensor([tokens])).logits[0].double()
    ref = reference_logits(ck, tokens)
    torch.testing.assert_close(hf, ref, atol=1e-4, rtol=1e-4)
    # Without the rotary permutation the logits differ: the test can see a wrong conversion.
    sd = hf_state_dict(ck)
    sd["model.layers.0.self_attn.q_proj.weight"] = ck.array("wq")[0]
    sd["model.layers.0.self_attn.k_proj.weight"] = ck.array("wk")[0]
    model.load_state_dict(sd)
    with torch.no_grad():
        wrong = model(torch.tensor([tokens])).logits[0].double()
    assert (wrong - ref).abs().max() > 1e-3


def test_heads_and_save(random_ckpt, tmp_path):
    path, _, _ = random_ckpt
    base = to_hf_model(path, head="base")
    cls = to_hf_model(path, head="sequence-classification", num_labels=3)
    assert type(base).__name__ == "LlamaModel" and type(cls).__name__ == "LlamaForSequenceClassification"
    assert cls.score.weight.shape == (3, 32)
    out = convert_to_hf(path, tmp_path / "hf")
    src = open_source(out)  # the saved directory reads back as a Llama checkpoint, q/k permuted
    assert src.family == "llama" and len(src) == 14
    ck = Llama2cCheckpoint(path)
    wq = next(iter(open_source(out, targets="q_proj", layers="1"))).weight
    assert torch.equal(wq, permute_rotary(ck.array("wq")[1], 4))


def _toy_tokenizer(tmp_path):
    pieces = [(b"<unk>", 0.0), (b"<s>", 0.0), (b"</s>", 0.0)]
    pieces += [(f"<0x{b:02X}>".encode(), 0.0) for b in range(256)]
    pieces += [
        (b" ", -1.0),
        (b"a", -2.0),
        (b"b", -2.0),
        (b"c", -2.0),
        (b"ab", -0.5),
        (b" ab", -0.1),
        (b"bc", -0.3),
        (b"\xc3\xa9", -3.0),
    ]  # 'é'
    path = tmp_path / "tok.bin"
    write_tokenizer(path, pieces)
    return Llama2cTokenizer.from_file(path)


def test_tokenizer_bpe_by_scores_and_byte_fallback(tmp_path):
    tok = _toy_tokenizer(tmp_path)
    ids = {p: i for i, p in enumerate(tok.vocab)}
    # "abc" → [" ", "a", "b", "c"] (dummy-prefix space first); the candidate merges are "ab" (score -0.5)
    # and "bc" (-0.3): "bc" wins, after which " a" and "abc" are not in the vocabulary, so it stops.
    assert tok.encode("abc") == [1, ids[b" "], ids[b"a"], ids[b"bc"]]
    assert tok.encode("ab") == [1, ids[b" ab"]]
    assert tok.encode("é", bos=False, eos=True) == [ids[b" "], ids[b"\xc3\xa9"], 2]
    # 'z' is not in the vocabulary: its byte token <0x7A>.
    assert tok.encode("z", bos=False) == [ids[b" "], ids[b"<0x7A>"]]
    for text in ["abc", "ab ab", "zéa", "日本"]:
        assert tok.decode(tok.encode(text)) == text


def test_heap_merge_equals_the_rescanning_loop_with_ties_and_chains(tmp_path, benchmark_script):
    import itertools
    import random

    rng = random.Random(0)
    chars = "ab c"
    pieces = [(b"<unk>", 0.0), (b"<s>", 0.0), (b"</s>", 0.0)]
    pieces += [(f"<0x{b:02X}>".encode(), 0.0) for b in range(256)]
    pieces += [(c.encode(), -5.0) for c in chars]
    # every string of 2-4 of these characters, a third of them, scores drawn from 4 values: many ties
    multi = ["".join(t) for n in (2, 3, 4) for t in itertools.product(chars, repeat=n)]
    scored = rng.sample(multi, len(multi) // 3)
    pieces += [(m.encode(), rng.choice([-1.0, -2.0, -3.0, -1e10])) for m in scored]
    path = tmp_path / "tok.bin"
    write_tokenizer(path, pieces)
    tok = Llama2cTokenizer.from_file(path)
    rescanning_merge = benchmark_script("tokenizer").rescanning_merge  # run.c's loop, as written
    for n in [0, 1, 2, 3, 5, 8, 13, 40, 120]:
        for _ in range(30):
            text = "".join(rng.choice(chars + "é") for _ in range(n))
            raw = tok.encode(text, bos=False)
            unmerged = [tok._lookup.get(c.encode()) for c in (" " + text if text else "")]
            if None not in unmerged:
                assert raw == rescanning_merge(tok, unmerged), text
            assert tok._merge(list(raw)) == rescanning_merge(tok, raw)


@pytest.mark.data
def test_stories260k_tokenizer_merges_real_text_as_run_c_does(stories260k, benchmark_script):
    tok = Llama2cTokenizer.from_file(stories260k.parent / "tok512.bin", vocab_size=512)
    text = "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May."
    pre = [tok._lookup[b" "]] + [tok._lookup.get(c.encode(), None) for c in text]
    assert None not in pre
    assert tok.encode(text, bos=False) == benchmark_script("tokenizer").rescanning_merge(tok, pre)


@pytest.mark.data
def test_stories260k_targets(stories260k):
    src = open_source(str(stories260k))
    assert len(src) == 35 and src.spec.target_shapes()["w1"] == (172, 64)
    named = open_source("stories260K")
    assert named.name == "stories260K" and named.origin == str(stories260k)


@pytest.mark.data
def test_stories260k_greedy_story_and_logits(stories260k):
    ck = Llama2cCheckpoint(stories260k)
    tok = Llama2cTokenizer.from_file(stories260k.parent / "tok512.bin", ck.config.vocab_size)
    model = load_hf_model("stories260K", head="causal-lm")
    assert type(model).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        tokens = greedy(lambda t: model(torch.tensor([t])).logits[0], 30)
    text = tok.decode(tokens)
    assert text.startswith("Once upon a time, there was a little girl named Lily"), text
    with torch.no_grad():
        hf = model(torch.tensor([tokens])).logits[0].double()
    ref = reference_logits(ck, tokens)
    assert float((hf - ref).abs().max()) < 1e-4
    assert greedy(lambda t: reference_logits(ck, t), 30) == tokens


@pytest.mark.data
def test_stories260k_tokenizer_round_trip(stories260k):
    tok = Llama2cTokenizer.from_file(stories260k.parent / "tok512.bin", 512)
    text = "Once upon a time, there was a little girl named Lily. She loved to play outside."
    ids = tok.encode(text)
    assert ids[0] == 1 and len(ids) < len(text) / 2  # merges happened
    assert tok.decode(ids) == text
    # The stored rotary table is the one the reference forward computes.
    ck = Llama2cCheckpoint(stories260k)
    hs = ck.config.head_size
    angle = torch.arange(512.0)[:, None] / (10000.0 ** (torch.arange(0, hs, 2).float() / hs))[None, :]
    torch.testing.assert_close(ck.array("freq_cis_real"), angle.cos(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dim", [64, 128, 288, 384])
def test_format_is_told_by_structure_not_by_the_first_byte(tmp_path, dim):
    # dim 128 and 384 are 0x80 modulo 256: the file starts with the byte a pickle starts with.
    path = tmp_path / f"d{dim}.bin"
    arrays = write_random_llama2c(
        path, dim=dim, hidden=dim + 16, n_layers=1, n_heads=4, n_kv_heads=2, vocab=8
    )
    assert (path.read_bytes()[0] == 0x80) == (dim % 256 == 128)
    ckpt = Llama2cCheckpoint(path)
    assert ckpt.config.dim == dim
    assert torch.equal(ckpt.layer_weight("wk", 0), arrays["wk"][0])
    assert [i.shape for i in open_source(path).targets()][:2] == [(dim, dim), (dim // 2, dim)]


def test_pytorch_files_are_recognised_as_such(tmp_path):
    for name, zipped in (("zip.bin", True), ("legacy.bin", False)):
        path = tmp_path / name
        torch.save({"w": torch.zeros(4, 4)}, path, _use_new_zipfile_serialization=zipped)
        with pytest.raises(CorruptCheckpointError, match="PyTorch checkpoint") as err:
            Llama2cCheckpoint(path)
        assert ("zip archive" if zipped else "pickle stream") in str(err.value)


def test_a_size_mismatch_says_which_numbers_disagree(tmp_path):
    path = tmp_path / "m.bin"
    write_random_llama2c(path, dim=32, vocab=40, shared=False)  # header says -40: its own classifier
    data = bytearray(path.read_bytes())
    data[20:24] = struct.pack("<i", 40)  # ... but the header now claims a shared one
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError) as err:
        Llama2cCheckpoint(path)
    msg = str(err.value)
    assert f"is {len(data)} bytes" in msg and "vocab_size=40" in msg
    assert f"extra {4 * 40 * 32} bytes are exactly one [vocab_size, dim] classifier" in msg and "-40" in msg
