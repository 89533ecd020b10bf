__all__ = ['ttypes', 'constants', 'Base']
