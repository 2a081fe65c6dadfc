"""Customer models: uploaded archives unpacked safely (:mod:`.archive`) and inspected in a worker (:mod:`.inspect`)."""
