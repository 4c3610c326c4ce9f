"""Where the sound goes first: audio sources and files, the Mel front end, patches, frame features."""
