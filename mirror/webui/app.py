"""Placeholder until the pages land: no path is a page yet."""


def handle(request, catalogue):
    return None
