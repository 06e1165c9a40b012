"""Commands built on the layers below: convert, rename, validate, the catalog and the demo tree."""
