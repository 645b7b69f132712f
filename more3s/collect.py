"""``python -m more3s.collect``: write a Minari dataset of a behaviour policy's episodes.

    python -m more3s.collect --env breakout --policy mixed --episodes 50 \\
        --dataset-id breakout/mixed-v0 [--seed 0] [--max-episode-steps 5000]

The dataset lands under $MINARI_DATASETS_PATH (default ~/.minari/datasets) and plain
``minari.load_dataset(ID)`` reads it. See more3s.data.policies for the policy strings.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    from more3s.data.policies import POLICY_HELP
    from more3s.envs import TASKS

    p = argparse.ArgumentParser(prog="python -m more3s.collect", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", required=True, help=f"task: {', '.join(TASKS)} (or a gym id)")
    p.add_argument("--policy", required=True, help=POLICY_HELP)
    p.add_argument("--episodes", type=int, required=True, help="number of episodes")
    p.add_argument("--dataset-id", required=True, help="Minari id, e.g. breakout/mixed-v0")
    p.add_argument("--seed", type=int, default=0, help="seed for env resets and policy noise")
    p.add_argument("--max-episode-steps", type=int, default=None,
                   help="truncate episodes at this many agent steps (default: the task's limit)")
    p.add_argument("--noop-max", type=int, default=None, help="Atari no-op starts (default 30)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from more3s.data.collect import collect_dataset

    try:
        path = collect_dataset(args.env, args.policy, args.episodes, args.dataset_id,
                               seed=args.seed, max_episode_steps=args.max_episode_steps,
                               overwrite=args.overwrite, progress=not args.no_progress,
                               noop_max=args.noop_max)
    except (ValueError, FileExistsError, FileNotFoundError, TypeError) as e:
        parser.error(str(e))  # exits with status 2 and the message
    import json

    meta = json.loads((path / "data" / "metadata.json").read_text())["more3s"]
    rets = meta["returns"]
    print(f"wrote {args.dataset_id} -> {path}")
    print(f"episodes {len(rets)}, steps {sum(meta['lengths'])}, return min/mean/max "
          f"{min(rets):.1f} / {sum(rets) / len(rets):.1f} / {max(rets):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
