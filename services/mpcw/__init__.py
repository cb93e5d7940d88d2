"""``mpcw``: the admin CLI (click). The group lives in ``services.mpcw.cli``."""
