"""Folding a GGUF LoRA into the base weights (bots/gguf_merge.py), on tiny GGUF files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402

from bots.gguf_merge import MergeError, cached_merged_gguf, merge_lora_gguf  # noqa: E402

RNG = np.random.default_rng(3)
OUT, IN, RANK = 8, 64, 2


def _base(path: Path, weight: np.ndarray) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_q.weight", quantize(weight, gguf.GGMLQuantizationType.Q4_1), raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(IN, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _lora(path: Path, tensors: dict[str, np.ndarray], alpha: float = 0.0) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _tensors(path: Path) -> dict[str, object]:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


@pytest.fixture()
def weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    weight = RNG.normal(size=(OUT, IN)).astype(np.float32)
    lora_a = RNG.normal(size=(RANK, IN)).astype(np.float32)
    lora_b = RNG.normal(size=(OUT, RANK)).astype(np.float32)
    return weight, lora_a, lora_b


def test_merged_weight_is_w_plus_b_a_stored_as_asked_and_other_tensors_are_copied(tmp_path: Path, weights) -> None:
    weight, lora_a, lora_b = weights
    base = _base(tmp_path / "base.gguf", weight)
    lora = _lora(tmp_path / "lora.gguf", {"blk.0.attn_q.weight.lora_a": lora_a, "blk.0.attn_q.weight.lora_b": lora_b})
    stored = dequantize(quantize(weight, gguf.GGMLQuantizationType.Q4_1), gguf.GGMLQuantizationType.Q4_1)
    expected = stored + lora_b @ lora_a

    exact = _tensors(merge_lora_gguf(base, lora, tmp_path / "f32.gguf", "F32"))
    assert exact["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_allclose(np.asarray(exact["blk.0.attn_q.weight"].data), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(exact["blk.0.attn_norm.weight"].data), np.ones(IN, dtype=np.float32))

    q8 = _tensors(merge_lora_gguf(base, lora, tmp_path / "q8.gguf", "Q8_0"))["blk.0.attn_q.weight"]
    assert q8.tensor_type == gguf.GGMLQuantizationType.Q8_0
    got = dequantize(np.asarray(q8.data), gguf.GGMLQuantizationType.Q8_0)
    assert np.abs(got - expected).max() <= np.abs(expected).max() / 127  # within one Q8_0 step
    own = _tensors(merge_lora_gguf(base, lora, tmp_path / "own.gguf"))["blk.0.attn_q.weight"]
    assert own.tensor_type == gguf.GGMLQuantizationType.Q4_1  # None keeps the weight's type


def test_a_non_zero_alpha_scales_the_product_by_alpha_over_rank(tmp_path: Path, weights) -> None:
    weight, lora_a, lora_b = weights
    base = _base(tmp_path / "base.gguf", weight)
    lora = _lora(tmp_path / "lora.gguf", {"blk.0.attn_q.weight.lora_a": lora_a, "blk.0.attn_q.weight.lora_b": lora_b}, alpha=4.0)
    merged = np.asarray(_tensors(merge_lora_gguf(base, lora, tmp_path / "m.gguf", "F32"))["blk.0.attn_q.weight"].data)
    stored = dequantize(quantize(weight, gguf.GGMLQuantizationType.Q4_1), gguf.GGMLQuantizationType.Q4_1)
    np.testing.assert_allclose(merged, stored + (4.0 / RANK) * lora_b @ lora_a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"blk.7.attn_q.weight.lora_a": np.zeros((RANK, IN), np.float32), "blk.7.attn_q.weight.lora_b": np.zeros((OUT, RANK), np.float32)}, "does not have"),
        ({"blk.0.attn_q.weight.lora_a": np.zeros((RANK, IN), np.float32)}, "needs both lora_a and lora_b"),
        ({"blk.0.attn_q.weight.lora_a": np.zeros((RANK, IN + 32), np.float32), "blk.0.attn_q.weight.lora_b": np.zeros((OUT, RANK), np.float32)}, "does not match"),
    ],
)
def test_an_adapter_that_does_not_fit_is_refused_and_nothing_is_written(tmp_path: Path, weights, tensors: dict, message: str) -> None:
    base = _base(tmp_path / "base.gguf", weights[0])
    with pytest.raises(MergeError, match=message):
        merge_lora_gguf(base, _lora(tmp_path / "lora.gguf", tensors), tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.gguf", "lora.gguf"]  # no output, no temporary file


def test_an_unknown_weight_type_is_refused(tmp_path: Path, weights) -> None:
    weight, lora_a, lora_b = weights
    lora = _lora(tmp_path / "lora.gguf", {"blk.0.attn_q.weight.lora_a": lora_a, "blk.0.attn_q.weight.lora_b": lora_b})
    with pytest.raises(MergeError, match="unknown GGML weight type 'Q9'"):
        merge_lora_gguf(_base(tmp_path / "base.gguf", weight), lora, tmp_path / "out.gguf", "Q9")


def test_merged_files_are_cached_by_content_and_weight_type(tmp_path: Path, weights) -> None:
    weight, lora_a, lora_b = weights
    base = _base(tmp_path / "base.gguf", weight)
    lora = _lora(tmp_path / "lora.gguf", {"blk.0.attn_q.weight.lora_a": lora_a, "blk.0.attn_q.weight.lora_b": lora_b})
    first = cached_merged_gguf(base, "fp", lora, tmp_path / "cache", "Q8_0")
    stamp = first.stat().st_mtime_ns
    assert cached_merged_gguf(base, "fp", lora, tmp_path / "cache", "Q8_0") == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert cached_merged_gguf(base, "fp", lora, tmp_path / "cache", "F32") != first
    assert cached_merged_gguf(base, "other base", lora, tmp_path / "cache", "Q8_0") != first


def test_a_truncated_copy_keeps_the_first_blocks_and_every_other_field(tmp_path: Path, weights) -> None:
    from bots.gguf_truncate import truncate_gguf

    base = _base(tmp_path / "base.gguf", weights[0])
    cut = gguf.GGUFReader(str(truncate_gguf(base, 1, tmp_path / "cut.gguf")))
    source = gguf.GGUFReader(str(base))
    assert int(cut.fields["llama.block_count"].contents()) == 1
    assert {t.name for t in cut.tensors} == {t.name for t in source.tensors}  # block 0 only: all kept
    assert {k for k in cut.fields if not k.startswith("GGUF.")} == {k for k in source.fields if not k.startswith("GGUF.")}
    with pytest.raises(ValueError, match="cannot keep 2"):
        truncate_gguf(base, 2, tmp_path / "too_many.gguf")


def _base_with_vocabulary(path: Path, embedding: np.ndarray) -> Path:
    """Two blocks, a Q8_0 token embedding and a (made-up) vocabulary of len(embedding) tokens."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_vocab_size(len(embedding))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(len(embedding))])
    writer.add_tensor("token_embd.weight", quantize(embedding, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    for block in range(2):
        writer.add_tensor(f"blk.{block}.attn_norm.weight", np.full(embedding.shape[1], block + 1, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(embedding.shape[1], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_headless_copy_has_no_vocabulary_and_token_rows_give_the_sources_vectors(tmp_path: Path) -> None:
    from bots.gguf_truncate import TokenRows, cached_truncated_gguf, truncate_gguf

    embedding = np.random.default_rng(3).normal(size=(40, 64)).astype(np.float32)
    base = _base_with_vocabulary(tmp_path / "base.gguf", embedding)
    cut = gguf.GGUFReader(str(truncate_gguf(base, 1, tmp_path / "cut.gguf", headless=True)))
    tensors = {t.name: t for t in cut.tensors}
    assert set(tensors) == {"token_embd.weight", "blk.0.attn_norm.weight", "output_norm.weight"}
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F32 and list(tensors["token_embd.weight"].shape) == [64, 1]
    assert str(cut.fields["tokenizer.ggml.model"].contents()) == "none"
    assert int(cut.fields["llama.vocab_size"].contents()) == 1 and int(cut.fields["llama.block_count"].contents()) == 1
    assert "tokenizer.ggml.tokens" not in cut.fields
    rows = TokenRows(base)
    assert (rows.count, rows.width) == (40, 64)
    got = rows([5, 0, 5, 39])
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (4, 64)
    exact = dequantize(np.asarray(_tensors(base)["token_embd.weight"].data), gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(got, exact[[5, 0, 5, 39]])
    np.testing.assert_allclose(got, embedding[[5, 0, 5, 39]], atol=0.05)  # Q8_0 of the source values
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 40\)"):
        rows([40])
    with pytest.raises(ValueError, match="has no token_embd"):
        TokenRows(truncate_gguf(_base(tmp_path / "plain.gguf", np.ones((IN, IN), dtype=np.float32)), 1, tmp_path / "plain-cut.gguf"))
    cached = cached_truncated_gguf(base, 1, tmp_path / "cache", "fp", headless=True)
    assert cached != cached_truncated_gguf(base, 1, tmp_path / "cache", "fp") and cached.name.endswith("-headless.gguf")


def test_a_copy_in_another_weight_format_requantises_the_matrices_and_keeps_the_norms(tmp_path: Path, weights) -> None:
    """The detector's Q4_0 copy: each quantised matrix is the source's values quantised again
    (close to them, in the new format); the norms stay F32 and exact; the cache names the format."""
    from bots.gguf_truncate import cached_truncated_gguf, truncate_gguf

    base = _base(tmp_path / "base.gguf", weights[0])
    copy = {t.name: t for t in gguf.GGUFReader(str(truncate_gguf(base, 1, tmp_path / "q4_0.gguf", weights="Q4_0"))).tensors}
    source = _tensors(base)
    matrix = copy["blk.0.attn_q.weight"]
    assert matrix.tensor_type == gguf.GGMLQuantizationType.Q4_0 and list(matrix.shape) == list(source["blk.0.attn_q.weight"].shape)
    was = dequantize(np.asarray(source["blk.0.attn_q.weight"].data), gguf.GGMLQuantizationType.Q4_1)
    now = dequantize(np.asarray(matrix.data), gguf.GGMLQuantizationType.Q4_0).reshape(was.shape)
    assert not np.array_equal(now, was) and np.corrcoef(now.ravel(), was.ravel())[0, 1] > 0.95
    assert copy["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(np.asarray(copy["blk.0.attn_norm.weight"].data), np.ones(IN, dtype=np.float32))
    with pytest.raises(ValueError, match="unknown weight format 'Q9'"):
        truncate_gguf(base, 1, tmp_path / "q9.gguf", weights="Q9")
    cached = cached_truncated_gguf(base, 1, tmp_path / "cache", "fp", headless=False, weights="Q4_0")
    assert cached.name.endswith("-q4_0.gguf") and cached != cached_truncated_gguf(base, 1, tmp_path / "cache", "fp")
