__all__ = ['ttypes', 'constants', 'Cache']
