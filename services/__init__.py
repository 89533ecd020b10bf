"""glammp: one Thrift front door to memcached, MogileFS and Gearman."""

__version__ = "0.1.0"
