"""`python -m scoresde`: the command-line tools, each run as `python -m scoresde.<command> --help`."""

from __future__ import annotations

COMMANDS = {
    "train": "train a score model from a TOML config (resumable; torchrun for several processes)",
    "sample": "draw samples from a run or an exported model: a figure, an .npz and optionally PNGs",
    "evaluate": "bits/dim of held-out data, or image metrics (FID, KID, IS, precision/recall) of samples",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: python -m scoresde.<command> [options]   (each command has --help)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(usage())
