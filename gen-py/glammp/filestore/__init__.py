__all__ = ['ttypes', 'constants', 'Filestore']
