"""Tools over whole models, built on the layers: graph reading (FX), fold, fuse, precise
statistics, the doctor, and interop with torch's converters.
"""
