"""(being written)"""

def summary(*args, **kwargs):
    raise NotImplementedError


def plot(*args, **kwargs):
    raise NotImplementedError


