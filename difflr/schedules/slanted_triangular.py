"""(being written)"""

class SlantedTriangular:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError


