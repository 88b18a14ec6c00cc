"""The command line: one thin module per verb group; each verb parses, calls one library function, prints."""
