"""The users service of issue 16, done with dbscale's integrations (see README "Web frameworks")."""
