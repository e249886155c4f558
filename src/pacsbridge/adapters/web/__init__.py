"""The HTML pages: signing in (built-in users or the site's OpenID provider) and the pages behind it."""
