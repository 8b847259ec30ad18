"""(being written)"""

def groups(*args, **kwargs):
    raise NotImplementedError


