"""Evidence: what a set of images says about its sites, from per-image band features
(``compare``: site separability and distances between sites). Arrays in, numbers out."""
