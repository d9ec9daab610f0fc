"""``bnlab list``: the experiments, their variants and the seed each reproduces."""

from __future__ import annotations

import argparse

HELP = "list the experiments, their variants and the norm layers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "experiment",
        nargs="?",
        help="show only this experiment, with its full default config",
    )


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from bnlab.experiments import all_experiments, get_experiment
    from bnlab.norm import available_norms

    specs = (
        {args.experiment: get_experiment(args.experiment)} if args.experiment else all_experiments()
    )
    for name, spec in specs.items():
        print(f"{name}: {spec.title}")
        print(f"  seed file: {spec.seed_file}")
        print("  variants:")
        width = max(len(v) for v in spec.variants)
        for vname, variant in spec.variants.items():
            print(f"    {vname.ljust(width)}  {variant.description}")
        if args.experiment:
            first = next(iter(spec.variants.values())).config
            print("  config of the first variant (fields, default values):")
            for f in dataclasses.fields(first):
                print(f"    {f.name} = {getattr(first, f.name)!r}")
        print()
    if not args.experiment:
        print("norm layers (for configs with a 'norm' field):")
        for name, description in available_norms().items():
            print(f"  {name}: {description}")
    return 0
