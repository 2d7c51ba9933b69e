"""The research studies behind `make reproduce`, `make views-study` and `make fidelity`.

They use the library (``pipeline/``) and its flows (``flows/``) the way a user
would; nothing in either imports them. Their results are in ``docs/studies.md``.
"""
