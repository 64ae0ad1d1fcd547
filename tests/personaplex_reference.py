"""NVIDIA's PersonaPlex generator, re-stated on Kyutai's PyTorch `LMModel` (for the tests only).

NVIDIA's package (NVIDIA/personaplex, MIT) is a fork of Kyutai's `moshi` with the same import
name, so it cannot be installed beside it. Its model is Kyutai's `LMModel` with `dep_q` 16; what
differs is the generator, `LMGen` (their `moshi/moshi/models/lm.py`): a token ring with a
`provided` mask, teacher forcing of any stream (`prepare_step_input`, L727-812;
`process_transformer_output`, L876-958; `depformer_step`, L1129-1177) and the prompt phases of
`step_system_prompts` (L1123-1127). `NvidiaGen` below follows that code line for line (greedy
sampling, batch 1), so our generator can be compared with it on Kyutai's model.
"""

from __future__ import annotations

import numpy as np
import torch

import moshi_reference as R

# NVIDIA's constants (lm.py L56-57), copied from their code rather than from our module
SILENCE_TOKENS = [948, 243, 1178, 546, 1736, 1030, 1978, 2008]
SINE_TOKENS = [430, 1268, 381, 1611, 1095, 1495, 56, 472]
ZERO_TEXT_CODE = 3  # `self.zero_text_code`
AUDIO_SILENCE_FRAME_CNT = int(0.5 * 12.5)  # offline.py: int(0.5 * mimi.frame_rate)

# PersonaPlex's architecture (8 + 8 codebooks, all 16 predicted by the depth decoder) at a tiny
# width; card 2048 so that NVIDIA's silence and sine codes are valid; a context the prompts wrap.
TINY = {
    **R.TINY,
    "text_card": 256,
    "n_q": 16,
    "dep_q": 16,
    "card": 2048,
    "context": 40,
    "depformer_context": 16,
    "delays": [0] + [0] + [1] * 7 + [0] + [1] * 7,
}


def seven_b(num_layers: int = 2, depformer_num_layers: int = 1) -> dict:
    """NVIDIA's config (Kyutai's 7B with `dep_q` 16, their loaders.py L187) with fewer layers."""
    return {
        **R.seven_b(num_layers),
        "dep_q": 16,
        "depformer_num_layers": depformer_num_layers,
    }


class NvidiaGen:
    """NVIDIA's `LMGen` (greedy, batch 1) on a Kyutai `LMModel` with `dep_q` 16."""

    def __init__(self, lm):
        self.lm = lm
        self.delays = list(lm.delays)
        self.max_delay = max(self.delays)
        K = lm.num_codebooks
        self.cache = torch.full((1, K, self.max_delay + 3), -2, dtype=torch.long)  # ungenerated
        self.provided = torch.zeros((1, K, self.max_delay + 3), dtype=torch.bool)
        self.initial = lm._get_initial_token()  # (1, K, 1)
        self.offset = 0
        self.inputs: list[np.ndarray] = []  # the (K,) input of every forward pass
        self.embeddings: list[torch.Tensor] = []
        self.save_embeddings = False

    # -- lm.py `prepare_step_input`
    def prepare(self, user=None, moshi=None, text=None):
        cache, provided, CT = self.cache, self.provided, self.cache.shape[2]
        for base, tokens in ((9, user), (1, moshi)):
            if tokens is None:
                continue
            for q in range(8):
                k = base + q
                pos = (self.offset + self.delays[k]) % CT
                cache[:, k, pos] = int(tokens[q])
                provided[:, k, pos] = True
        if text is not None:
            pos = (self.offset + self.delays[0]) % CT
            cache[:, 0, pos] = int(text)
            provided[:, 0, pos] = True
        for k, delay in enumerate(self.delays):
            if self.offset <= delay:
                cache[:, k, self.offset % CT] = self.initial[:, k, 0]
                provided[:, k, self.offset % CT] = True
        if self.offset == 0:
            cache[:, :, 0] = self.initial[:, :, 0]
            self.offset += 1
            return None
        inp, tgt = (self.offset - 1) % CT, self.offset % CT
        input_, target_ = cache[:, :, inp : inp + 1], cache[:, :, tgt : tgt + 1]
        return input_, provided[:, :, tgt : tgt + 1], target_, inp, tgt

    @torch.no_grad()
    def step(self, user=None, moshi=None, text=None):
        prepared = self.prepare(user, moshi, text)
        if prepared is None:
            return None
        input_, provided_, target_, inp, tgt = prepared
        self.inputs.append(input_[0, :, 0].numpy().copy())
        if self.save_embeddings:
            self.embeddings.append(self.embed(input_))
        out, text_logits = self.lm.forward_text(input_)
        return self.process(out, text_logits, provided_, target_, inp, tgt)

    def embed(self, input_):
        lm = self.lm
        x = lm.text_emb(input_[:, 0])
        for k in range(lm.num_audio_codebooks):
            x = x + lm.emb[k](input_[:, k + lm.audio_offset])
        return x  # (1, 1, dim)

    @torch.no_grad()
    def step_embeddings(self, embeddings):
        """lm.py `step_embeddings`: a forward pass of saved embeddings, dummy tokens forced."""
        init = self.initial[0, :, 0]
        while True:
            prepared = self.prepare(user=init[1:9], moshi=init[9:17], text=ZERO_TEXT_CODE)
            if prepared is not None:
                break
        _, provided_, target_, inp, tgt = prepared
        lm = self.lm
        out = lm.transformer(embeddings)
        out = lm.out_norm(out)
        return self.process(out, lm.text_linear(out)[:, None], provided_, target_, inp, tgt)

    # -- lm.py `process_transformer_output` and `depformer_step`
    def process(self, out, text_logits, provided_, target_, inp, tgt):
        lm, cache, provided = self.lm, self.cache, self.provided
        sampled_text = text_logits[:, 0, 0].argmax(-1)  # (1,)
        next_text = torch.where(provided_[:, 0, 0], target_[:, 0, 0], sampled_text)
        audio = self.depformer(next_text, out, target_[:, 1:, 0], provided_[:, 1:, 0])
        provided[:, :, inp] = False
        cache[:, 0, tgt] = torch.where(~provided[:, 0, tgt], sampled_text, cache[:, 0, tgt])
        g = slice(1, lm.dep_q + 1)
        cache[:, g, tgt] = torch.where(~provided[:, g, tgt], audio, cache[:, g, tgt])
        if self.offset <= self.max_delay:
            self.offset += 1
            return None
        CT = cache.shape[2]
        index = torch.tensor(
            [(self.offset - self.max_delay + d) % CT for d in self.delays[: lm.dep_q + 1]]
        )
        result = cache[0, torch.arange(lm.dep_q + 1), index].clone()
        self.offset += 1
        return result  # (17,): text and the 16 codebooks of time offset - max_delay

    def depformer(self, text, out, audio_tokens, audio_provided):
        lm = self.lm
        prev = text
        tokens = []
        with lm.depformer.streaming(1):
            for cb in range(lm.dep_q):
                logits = lm.forward_depformer(cb, prev[:, None, None], out)
                nxt = logits[:, 0, 0].argmax(-1)
                prev = torch.where(audio_provided[:, cb], audio_tokens[:, cb], nxt)
                tokens.append(nxt)
        return torch.stack(tokens, dim=1)

    # -- lm.py `step_system_prompts`
    def system_prompts(self, voice_codes=None, text_tokens=None, voice_embeddings=None, cache=None):
        if voice_embeddings is not None:
            for e in voice_embeddings:
                self.step_embeddings(e)
            self.cache.copy_(cache)
        elif voice_codes is not None:
            for i in range(voice_codes.shape[1]):
                self.step(user=SINE_TOKENS, moshi=voice_codes[:, i], text=ZERO_TEXT_CODE)
        for _ in range(AUDIO_SILENCE_FRAME_CNT):
            self.step(user=SINE_TOKENS, moshi=SILENCE_TOKENS, text=ZERO_TEXT_CODE)
        for t in text_tokens or []:
            self.step(user=SINE_TOKENS, moshi=SILENCE_TOKENS, text=t)
        for _ in range(AUDIO_SILENCE_FRAME_CNT):
            self.step(user=SINE_TOKENS, moshi=SILENCE_TOKENS, text=ZERO_TEXT_CODE)

    def converse(self, user: np.ndarray) -> tuple[np.ndarray, list]:
        """`step(input_tokens=user)` for each frame (8, T): text tokens and Moshi's frames out."""
        texts, frames = [], []
        for i in range(user.shape[1]):
            out = self.step(user=user[:, i])
            texts.append(None if out is None else int(out[0]))
            frames.append(None if out is None else out[1:9].numpy())
        return texts, frames


def make_lm(cfg: dict, seed: int, bf16_exact: bool = False):
    lm = R.make_kyutai_lm(cfg, seed, bf16_exact)
    return lm


def run_nvidia(lm, voice_codes, text_tokens, user, preset=None) -> NvidiaGen:
    gen = NvidiaGen(lm)
    with lm.streaming(1):
        if preset is not None:
            gen.system_prompts(None, text_tokens, *preset)
        else:
            gen.system_prompts(voice_codes, text_tokens)
        gen.prompt_inputs = len(gen.inputs)
        gen.result = gen.converse(user)
    gen.lm = None  # the results only: the model can be freed
    return gen


def save_voice_preset(lm, voice_codes) -> tuple[torch.Tensor, torch.Tensor]:
    """NVIDIA's `.pt` contents after a voice prompt (`save_voice_prompt_embeddings`)."""
    gen = NvidiaGen(lm)
    gen.save_embeddings = True
    with lm.streaming(1):
        for i in range(voice_codes.shape[1]):
            gen.step(user=SINE_TOKENS, moshi=voice_codes[:, i], text=ZERO_TEXT_CODE)
    return torch.stack(gen.embeddings, dim=0).detach(), gen.cache.clone()
