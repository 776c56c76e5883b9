"""Upload a finished pass-hub folder (model, processor, card, pictures) to the Hugging Face Hub.

    python training/push.py outputs/finetune/pass-vit-reid your-name/pass-vit-s16-market [--private]

The folder is checked first: the files both transformers and timm need, and a model card that
huggingface_hub's own parser reads, with a ``model-index`` when the card reports results.
"""

from __future__ import annotations

import sys
from pathlib import Path

from huggingface_hub import HfApi, ModelCard

from pass_hub.flags import FlagParser

REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")


def check_hub_folder(folder: str | Path) -> ModelCard:
    """Raise ``ValueError`` naming what is missing or malformed; return the parsed card."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder} lacks {', '.join(missing)}")
    card = ModelCard.load(folder / "README.md")
    for key in ("library_name", "license", "pipeline_tag", "tags"):
        if not getattr(card.data, key, None):
            raise ValueError(f"{folder / 'README.md'}: the card's front matter has no {key!r}")
    return card


def push_folder(
    folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None, commit_message: str = ""
) -> str:
    """Check ``folder`` and upload it to the model repo ``repo_id`` (created if needed); returns the commit URL."""
    check_hub_folder(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        commit_message=commit_message or f"Upload {Path(folder).name} with pass-hub",
    )
    return str(getattr(commit, "commit_url", commit))


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a pass-hub folder written by a training script or `pass-hub convert`")
    parser.add_argument("repo_id", help="target model repo, e.g. your-name/pass-vit-s16-market")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", help="hub token (default: the logged-in one)")
    parser.add_argument("--commit_message", default="")
    args = parser.parse_args(argv)
    try:
        url = push_folder(args.folder, args.repo_id, private=args.private, token=args.token,
                          commit_message=args.commit_message)
    except ValueError as err:
        print(f"push: error: {err}", file=sys.stderr)
        return 2
    print(f"uploaded {args.folder} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
