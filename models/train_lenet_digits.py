"""Train and export the embedded default model: a LeNet-style CNN on scikit-learn's digits.

    python models/train_lenet_digits.py [--output models/lenet_digits.onnx] [--seed 0]

Uses the ``digits`` dataset plugin's split (training: ``i % 5 != 0``), a fixed
seed and deterministic CPU kernels, so rerunning it regenerates the same
weights up to floating-point differences between machines and the same accuracy.
Exported with torch's TorchScript-based exporter at opset 17 with a dynamic
batch axis, the form vendors most often ship.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import onnx
import torch
from torch import nn


class LeNetDigits(nn.Module):
    """Two 3×3 conv layers with max-pooling and two fully connected layers (8×8 input)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16 x 4 x 4
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32 x 2 x 2
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def train(seed: int = 0, epochs: int = 60) -> tuple[LeNetDigits, float]:
    from cimguard_plugins.datasets.digits import load_digits_dataset

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    data = load_digits_dataset()
    x_train, y_train = data.require_training()
    model = LeNetDigits()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(data.x_eval).argmax(1) == data.y_eval).float().mean())
    return model, accuracy


def export(model: nn.Module, path: Path) -> None:
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        buffer,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    proto = onnx.load_model_from_string(buffer.getvalue())
    proto.producer_name = "cimguard/models/train_lenet_digits.py"
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("lenet_digits.onnx"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    model, accuracy = train(args.seed, args.epochs)
    export(model, args.output)
    print(f"held-out accuracy {accuracy:.4f}; wrote {args.output}")


if __name__ == "__main__":
    main()
