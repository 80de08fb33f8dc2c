"""The user's side: the Typer app (``app``), what the terminal shows (``display``), the
HTML pages (``report`` for a run, ``comparison`` for compare, ``html`` their shared
figures, ``templates/``) and the band panel (``panel``)."""
