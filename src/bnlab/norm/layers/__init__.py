"""The layers (nn.Modules) built on bnlab.norm.ops: drop-in BatchNorm1d/2d/3d, the
safe-statistics policies, variants, sync, frozen, BN + activation, and the registry by name.
"""
