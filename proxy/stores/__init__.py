"""Cache backends behind one ``Store`` protocol (see ``base.py``)."""
