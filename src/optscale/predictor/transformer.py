"""The paper's predictor architecture, for users with a GPU.

A Hugging Face decoder backbone (the paper used DeepSeek-R1-Distill-Qwen-1.5B) reads the
question; only its last ``trainable_layers`` layers (and final norm) are trained. Token states
are pooled by attention that gives padding zero weight, and two MLP heads predict the score
mean (through a sigmoid, so it stays in (0, 1)) and the score std (through a softplus: the
positive sigma head). Training minimises squared error on both moments.

It shares the :class:`~optscale.predictor.base.Predictor` interface, so validation, predictive
intervals and prior widths work as for the CPU predictors; by default it validates on one
held-out fold rather than refitting five times. The saved folder holds only the trained
parameters and refers to ``backbone`` (a hub id or a local folder) for the frozen rest.
torch and transformers are imported only when this kind is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from .base import Predictor
from .data import Problems

__all__ = ["TransformerPredictor"]

WEIGHTS_FILE = "trainable.safetensors"


def _modules():
    """Build the torch modules on first use (keeps torch out of ``import optscale``)."""
    try:
        import torch
        from torch import nn
    except ImportError:
        raise InputError("the transformer predictor needs torch and transformers (the predictor extra)", "kind") from None

    class AttentionPooling(nn.Module):
        """Softmax-weighted sum of token states; padded positions get exactly zero weight."""

        def __init__(self, hidden: int):
            super().__init__()
            self.score = nn.Linear(hidden, 1)

        def forward(self, states, mask):
            logits = self.score(states).squeeze(-1).float()
            logits = logits.masked_fill(~mask.bool(), torch.finfo(logits.dtype).min)
            weights = torch.softmax(logits, dim=-1).to(states.dtype)
            return torch.einsum("bt,bth->bh", weights, states)

    def head(hidden: int, width: int, dropout: float) -> nn.Module:
        return nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, 1))

    class MomentNet(nn.Module):
        def __init__(self, backbone, head_hidden: int, dropout: float):
            super().__init__()
            hidden = backbone.config.hidden_size
            self.backbone = backbone
            self.pool = AttentionPooling(hidden)
            self.mean_head = head(hidden, head_hidden, dropout)
            self.sigma_head = head(hidden, head_hidden, dropout)

        def forward(self, input_ids, attention_mask):
            states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            pooled = self.pool(states, attention_mask).float()
            mean = torch.sigmoid(self.mean_head(pooled)).squeeze(-1)
            std = nn.functional.softplus(self.sigma_head(pooled)).squeeze(-1)
            return torch.stack([mean, std], -1)

    return torch, nn, MomentNet


class TransformerPredictor(Predictor):
    """Fine-tuned decoder with attention pooling and two heads (OptScale's original predictor)."""

    kind = "transformer"
    validation_rounds = 1
    defaults = {
        "backbone": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "trainable_layers": 4,
        "max_length": 512,
        "epochs": 3,
        "batch_size": 8,
        "learning_rate": 2e-5,
        "head_learning_rate": 1e-3,
        "head_hidden": 256,
        "dropout": 0.1,
        "weight_decay": 0.01,
        "device": "auto",
        "seed": 0,
    }

    def _device(self, torch):
        device = self.params["device"]
        return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device

    def _build(self):
        torch, nn, MomentNet = _modules()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.manual_seed(self.params["seed"])
        self.tokenizer = AutoTokenizer.from_pretrained(self.params["backbone"])
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        backbone = AutoModel.from_pretrained(self.params["backbone"], dtype=torch.float32)
        self.net = MomentNet(backbone, self.params["head_hidden"], self.params["dropout"])
        layers = next((m for m in backbone.modules() if isinstance(m, nn.ModuleList) and len(m)), None)
        k = self.params["trainable_layers"]
        if layers is None or not 0 <= k <= len(layers):
            raise InputError(f"trainable_layers must be between 0 and the backbone's {len(layers or [])} layers, got {k}", "trainable_layers")
        trainable = [*(layers[len(layers) - k:] if k else []), getattr(backbone, "norm", None)]
        for p in backbone.parameters():
            p.requires_grad_(False)
        for module in filter(None, trainable):
            for p in module.parameters():
                p.requires_grad_(True)
        self.device = self._device(torch)
        self.net.to(self.device)
        return torch

    def _batches(self, questions, order):
        size = self.params["batch_size"]
        for start in range(0, len(order), size):
            idx = order[start:start + size]
            enc = self.tokenizer([questions[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.params["max_length"], return_tensors="pt")
            yield idx, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def _autocast(self, torch):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.startswith("cuda"))

    def _fit(self, problems: Problems, targets: np.ndarray) -> None:
        torch = self._build()
        # Start both heads at the training average: otherwise the first epochs only move biases.
        with torch.no_grad():
            mean, std = np.clip(targets.mean(axis=0), [1e-3, 1e-3], [1 - 1e-3, 0.5])
            self.net.mean_head[-1].bias.fill_(float(np.log(mean / (1 - mean))))
            self.net.sigma_head[-1].bias.fill_(float(np.log(np.expm1(std))))
        heads = [p for n, p in self.net.named_parameters() if not n.startswith("backbone.")]
        body = [p for n, p in self.net.named_parameters() if n.startswith("backbone.") and p.requires_grad]
        optimizer = torch.optim.AdamW(
            [{"params": body, "lr": self.params["learning_rate"]}, {"params": heads, "lr": self.params["head_learning_rate"]}],
            weight_decay=self.params["weight_decay"])
        y = torch.as_tensor(targets, dtype=torch.float32, device=self.device)
        rng = np.random.default_rng(self.params["seed"])
        self.net.train()
        for _ in range(self.params["epochs"]):
            for idx, ids, mask in self._batches(problems.questions, rng.permutation(len(problems))):
                with self._autocast(torch):
                    loss = torch.nn.functional.mse_loss(self.net(ids, mask).float(), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    def _predict(self, problems: Problems) -> np.ndarray:
        torch = _modules()[0]
        self.net.eval()
        out = np.zeros((len(problems), 2))
        with torch.no_grad(), self._autocast(torch):
            for idx, ids, mask in self._batches(problems.questions, np.arange(len(problems))):
                out[idx] = self.net(ids, mask).float().cpu().numpy()
        return out

    def _trainable_state(self) -> dict:
        names = {n for n, p in self.net.named_parameters() if p.requires_grad}
        return {n: t for n, t in self.net.state_dict().items() if n in names}

    def _save_weights(self, folder: Path) -> dict:
        from safetensors.torch import save_file

        save_file({n: t.detach().float().cpu().contiguous() for n, t in self._trainable_state().items()}, str(folder / WEIGHTS_FILE))
        return {"weights": WEIGHTS_FILE}

    def _load_weights(self, folder: Path, state: dict) -> None:
        from safetensors.torch import load_file

        self._build()
        saved = load_file(str(folder / state["weights"]), device=self.device)
        expected = set(self._trainable_state())
        if set(saved) != expected:
            raise InputError(f"{state['weights']} does not match the backbone's trainable layers", str(folder))
        self.net.load_state_dict(saved, strict=False)
