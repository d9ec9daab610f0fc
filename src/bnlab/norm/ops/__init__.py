"""The math and the operators: no nn.Module here. From the bottom: argument checks, the
batch-norm math (core), the readable reference, the fused kernels and their registration as
PyTorch operators (library), the backend table (dispatch) and the functional front end.
"""
