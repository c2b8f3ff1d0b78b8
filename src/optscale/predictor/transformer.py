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
from typing import Annotated, Literal

import numpy as np
from pydantic import Field, StrictFloat, StrictInt, StrictStr

from ..errors import InputError
from .base import MAX_SEED, Predictor
from .data import Problems
from .validation import Params, State

__all__ = ["TransformerPredictor"]

WEIGHTS_FILE = "trainable.safetensors"
#: Bounds of the sizes (each scales an allocation) and of the step sizes.
MAX_LENGTH = 32768
MAX_BATCH = 1024
MAX_EPOCHS = 1000
MAX_HEAD_HIDDEN = 16384
MAX_LAYERS = 1000
LearningRate = Annotated[StrictFloat, Field(gt=0, le=1)]


class TransformerParams(Params):
    backbone: StrictStr = Field("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", min_length=1, max_length=4096,
                                description="a Hugging Face model id or a local model folder")
    trainable_layers: StrictInt = Field(4, ge=0, le=MAX_LAYERS,
                                        description="last backbone layers trained, an integer from 0 to the backbone's layers")
    max_length: StrictInt = Field(512, ge=1, le=MAX_LENGTH, description=f"tokens read per question, 1 to {MAX_LENGTH}")
    epochs: StrictInt = Field(3, ge=1, le=MAX_EPOCHS, description=f"an integer from 1 to {MAX_EPOCHS}")
    batch_size: StrictInt = Field(8, ge=1, le=MAX_BATCH, description=f"an integer from 1 to {MAX_BATCH}")
    learning_rate: LearningRate = Field(2e-5, description="step size of the backbone's layers, a number in (0, 1]")
    head_learning_rate: LearningRate = Field(1e-3, description="step size of the pooling and heads, a number in (0, 1]")
    head_hidden: StrictInt = Field(256, ge=1, le=MAX_HEAD_HIDDEN,
                                   description=f"width of each head's hidden layer, 1 to {MAX_HEAD_HIDDEN}")
    dropout: StrictFloat = Field(0.1, ge=0, lt=1, description="a number in [0, 1)")
    weight_decay: StrictFloat = Field(0.01, ge=0, le=1, description="AdamW's decoupled weight decay, a number in [0, 1]")
    device: StrictStr = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d{1,3})?)$",
                              description="'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")
    seed: StrictInt = Field(0, ge=0, le=MAX_SEED, description="an integer from 0 to 2**32-1")


class TransformerState(State):
    #: Always this name: a path from the file is never followed out of the model folder.
    weights: Literal["trainable.safetensors"]


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
    params_model = TransformerParams
    state_model = TransformerState

    def _device(self, torch):
        device = self.params["device"]
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError("CUDA is not available here; use device=auto or cpu", "device")
        return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device

    def _build(self):
        torch, nn, MomentNet = _modules()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.manual_seed(self.params["seed"])
        try:  # a missing folder, an unknown hub id (or no network), a folder of another kind of model
            self.tokenizer = AutoTokenizer.from_pretrained(self.params["backbone"])
            backbone = AutoModel.from_pretrained(self.params["backbone"], dtype=torch.float32)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot load the backbone: {exc}", "backbone") from None
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
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
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        torch = self._build()
        path = folder / state["weights"]
        try:
            saved = load_file(str(path), device=self.device)
        except (SafetensorError, OSError) as exc:
            raise InputError(f"not a readable safetensors file ({exc})", str(path)) from None
        if set(saved) != set(self._trainable_state()):
            raise InputError("does not match the backbone's trainable layers", str(path))
        bad = next((name for name, t in saved.items() if not bool(torch.isfinite(t).all())), None)
        if bad is not None:
            raise InputError("holds NaN or infinite values", f"{path} field {bad}")
        try:
            self.net.load_state_dict(saved, strict=False)
        except RuntimeError as exc:  # a tensor of another shape
            raise InputError(f"does not match the backbone's trainable layers ({exc})", str(path)) from None
