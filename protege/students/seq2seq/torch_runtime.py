"""A saved seq2seq student run in PyTorch behind the predictor's backend interface: label
scoring by teacher forcing (every candidate in one decoder pass) and generation."""

from __future__ import annotations

from pathlib import Path

from protege.formats import clip_sources


class TorchBackend:
    """Hugging Face seq2seq model in PyTorch (T5, BART, EncoderDecoderModel)."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "cpu",
        max_source_len: int = 512,
        threads: int | None = None,
    ):
        import torch

        from protege.students.seq2seq.build import load_student

        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has no per-model setting
        self.torch = torch
        self.model, self.tok = load_student(model_dir)
        self.model.to(device).eval()
        self.device = device
        self.max_source_len = max_source_len
        cfg, gen = self.model.config, self.model.generation_config
        self.start_id = gen.decoder_start_token_id
        if self.start_id is None:
            self.start_id = cfg.decoder_start_token_id
        # generate() puts eos at the last allowed step when this is set (bart-base does).
        self.forced_eos = getattr(gen, "forced_eos_token_id", None) is not None
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

    def _encode(self, sources: list[str]):
        enc = self.tok(
            clip_sources(sources, self.max_source_len),
            padding=True,
            truncation=True,
            max_length=self.max_source_len,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    def token_logprobs(
        self, sources: list[str], candidates: list[list[int]], prefix: list[int] = ()
    ) -> list[list[list[float]]]:
        torch = self.torch
        from transformers.modeling_outputs import BaseModelOutput

        prefix = list(prefix)
        with torch.inference_mode():
            enc = self._encode(sources)
            hidden = self.model.get_encoder()(**enc).last_hidden_state  # (B, S, H)
            b, k = hidden.shape[0], len(candidates)
            t = len(prefix) + max(len(c) for c in candidates)
            # Teacher forcing: decoder input is [start] + prefix + candidate[:-1], right-padded;
            # the prefix positions are not scored (their target stays 0, then is cut off).
            dec = torch.full((k, t), self.pad_id, dtype=torch.long)
            target = torch.zeros((k, t), dtype=torch.long)
            mask = torch.zeros((k, t), dtype=torch.long)
            for i, c in enumerate(candidates):
                seq = prefix + c
                dec[i, : len(seq)] = torch.tensor([self.start_id] + seq[:-1])
                target[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
            out = self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden.repeat_interleave(k, 0)),
                attention_mask=enc["attention_mask"].repeat_interleave(k, 0),
                decoder_input_ids=dec.repeat(b, 1).to(self.device),
                decoder_attention_mask=mask.repeat(b, 1).to(self.device),
            )
            logits = out.logits.float()  # (B*K, T, V)
            idx = target.repeat(b, 1).to(self.device)[..., None]
            lp = (logits.gather(-1, idx).squeeze(-1) - logits.logsumexp(-1)).view(b, k, t)
            lp = lp.cpu().tolist()
        p = len(prefix)
        return [[row[i][p : p + len(c)] for i, c in enumerate(candidates)] for row in lp]

    def first_logprobs(self, sources: list[str], token_ids: list[int]) -> list[list[float]]:
        torch = self.torch
        with torch.inference_mode():
            enc = self._encode(sources)
            start = torch.full((len(sources), 1), self.start_id, device=self.device)
            logits = self.model(**enc, decoder_input_ids=start).logits[:, 0].float()  # (B, V)
            lp = logits.log_softmax(-1)[:, token_ids]
        return lp.cpu().tolist()

    def generate(self, sources: list[str], max_new_tokens: int, num_beams: int = 1) -> list[str]:
        with self.torch.inference_mode():
            enc = self._encode(sources)
            out = self.model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams
            )
        return self.tok.batch_decode(out, skip_special_tokens=True)
