"""(being written)"""

def fine_tune(*args, **kwargs):
    raise NotImplementedError


