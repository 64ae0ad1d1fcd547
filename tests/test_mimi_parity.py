"""Mimi against both references (Kyutai's `moshi`, transformers) on the same random weights.

Weights are saved by the references in their own layouts and loaded through our real loaders.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mimi_reference as R
from mimi_mlx import load_mimi

FRAME = 1920


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def inputs(refs) -> dict[str, np.ndarray]:
    n = len(refs.speech) // FRAME * FRAME  # whole frames: transformers pads partial ones otherwise
    return {"speech": refs.speech[:n], "noise": R.noise(n / 24000, seed=3)}


@pytest.fixture(params=["tiny", "full"], scope="module")
def refs(request):
    return request.getfixturevalue(f"{request.param}_refs")


@pytest.fixture(params=["kyutai", "hf"], scope="module")
def ours(request, refs):
    """Our model, loaded from the Kyutai-layout folder or the transformers-layout folder."""
    folder = refs.kyutai_dir if request.param == "kyutai" else refs.hf_dir
    return load_mimi(folder)


@pytest.mark.parametrize("signal", ["speech", "noise"])
@pytest.mark.parametrize("n_q", [8, 32])
@torch.no_grad()
def test_codes_latents_audio_match_references(refs, ours, signal, n_q):
    audio = inputs(refs)[signal]
    x = torch.from_numpy(audio)[None, None]
    refs.kyutai.set_num_codebooks(n_q)
    kyutai_codes = refs.kyutai.encode(x).numpy()
    hf_codes = refs.hf.encode(x, num_quantizers=n_q).audio_codes.numpy()
    codes = np.array(ours.encode(audio[None, None], num_quantizers=n_q))
    assert codes.shape == (1, n_q, len(audio) // FRAME)
    np.testing.assert_array_equal(kyutai_codes, hf_codes)  # the references agree...
    np.testing.assert_array_equal(codes, kyutai_codes)  # ...and so do we, code for code

    latent = np.array(ours.encode_latent(audio[None, None])).transpose(0, 2, 1)
    assert rel(latent, refs.kyutai._encode_to_unquantized_latent(x).numpy()) < 1e-4

    decoded = np.array(ours.decode(kyutai_codes))
    assert rel(decoded, refs.kyutai.decode(torch.from_numpy(kyutai_codes)).numpy()) < 1e-4
    hf_audio = refs.hf.decode(torch.from_numpy(kyutai_codes)).audio_values.numpy()
    assert rel(decoded, hf_audio) < 1e-4


@torch.no_grad()
def test_streaming_matches_kyutai_streaming_frame_by_frame(refs):
    """Frame by frame against `moshi`'s own streaming, within its exact range.

    Kyutai's streaming ring cache holds exactly `context` keys but receives two per 80 ms frame,
    so once it is full the first query of a frame loses its oldest key and its streaming drifts
    from its own batch output. We follow the batch semantics (as transformers does), so the
    comparison covers the frames before the cache fills (10 s at full size).
    """
    ours = load_mimi(refs.kyutai_dir)
    context_frames = refs.config["transformer"]["context"] // 2
    audio = inputs(refs)["speech"]
    n_frames = min(len(audio) // FRAME, context_frames)
    refs.kyutai.set_num_codebooks(8)
    ours.reset()
    with refs.kyutai.streaming(1):
        for i in range(n_frames):
            frame = audio[i * FRAME : (i + 1) * FRAME]
            ref_codes = refs.kyutai.encode(torch.from_numpy(frame)[None, None])
            codes = ours.encode_step(frame[None, None], num_quantizers=8)
            np.testing.assert_array_equal(np.array(codes), ref_codes.numpy(), err_msg=f"frame {i}")
            ref_audio = refs.kyutai.decode(ref_codes).numpy()
            out = np.array(ours.decode_step(ref_codes.numpy()))
            assert rel(out, ref_audio) < 1e-4, f"frame {i}"


def test_both_layouts_load_the_same_weights(refs):
    a, b = load_mimi(refs.kyutai_dir), load_mimi(refs.hf_dir)
    from mlx.utils import tree_flatten

    pa, pb = dict(tree_flatten(a.parameters())), dict(tree_flatten(b.parameters()))
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(np.array(pa[k]), np.array(pb[k]), rtol=0, atol=1e-6, err_msg=k)
