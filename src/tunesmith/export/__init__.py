"""Export a finished run: merge the adapter into the base, write GGUF, an Ollama Modelfile, or push to the Hub."""
