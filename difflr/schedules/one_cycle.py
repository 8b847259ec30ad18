"""(being written)"""

class OneCycle:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError


