"""ImageFolder for real dataset copies: a file that fails to decode (truncated, not an image at all) must not end a
30-epoch run hours in. It is replaced, logged once and counted; only past data.max_bad_images does the run stop."""
import multiprocessing

from torchvision.datasets import ImageFolder

from dimap.errors import UserError


class TooManyBadImages(UserError):
    """More unreadable images than data.max_bad_images. Raised in a DataLoader worker, it is re-raised in the main
    process with the worker's traceback as its message (torch's ExceptionWrapper); keep only our sentence."""

    def __init__(self, message: str):
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class TolerantImageFolder(ImageFolder):
    """ImageFolder that replaces a file it cannot decode (truncated, not an image) by the next readable one, so
    batches keep their size and ranks their step counts. Each bad file is logged once and counted once per
    process group rank (the count is shared by its loader workers); past `max_bad` the run stops."""

    def __init__(self, root, transform, max_bad: int):
        super().__init__(root, transform=transform)
        self.max_bad = int(max_bad)
        self.bad = multiprocessing.Array("q", self.max_bad + 1)  # indices of the bad files seen, then their count
        self.n_bad = multiprocessing.Value("i", 0, lock=False)

    def __getitem__(self, index):
        for offset in range(len(self.samples)):
            i = (index + offset) % len(self.samples)
            path, target = self.samples[i]
            try:
                sample = self.loader(path)
            except Exception as e:  # any failure to decode the file; transform errors are not caught
                self._bad_file(i, path, e)
                continue
            if self.transform is not None:
                sample = self.transform(sample)
            if self.target_transform is not None:
                target = self.target_transform(target)
            return sample, target
        raise TooManyBadImages(f"no image under {self.root} can be read: check the dataset copy")

    def _bad_file(self, i, path, error):
        with self.bad.get_lock():
            n = self.n_bad.value
            if i in self.bad[:n]:
                return
            self.bad[n] = i
            self.n_bad.value = n = n + 1
        print(f"warning: skipping unreadable image {path} ({type(error).__name__}: {error}); {n} so far "
              f"(data.max_bad_images={self.max_bad})", flush=True)
        if n > self.max_bad:
            raise TooManyBadImages(
                f"{n} images under {self.root} could not be read, more than data.max_bad_images={self.max_bad} "
                f"(the last: {path}): repair or remove them, or raise data.max_bad_images and rerun to resume")
