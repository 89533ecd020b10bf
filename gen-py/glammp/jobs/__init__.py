__all__ = ['ttypes', 'constants', 'Jobs']
