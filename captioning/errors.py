"""The errors a user can cause and fix; the CLI prints them as one line, without a traceback."""

from captioning.apps.batch_caption import BatchCaptionError
from captioning.config import ConfigError
from captioning.data.datasets import DatasetError
from captioning.data.images import ImageLoadError
from captioning.files import CacheWriteError
from captioning.models.encoders import EncoderWeightsError
from captioning.models.model_file import ModelFileError
from captioning.reports.results_page import ResultsPageError
from captioning.runs import RunError
from captioning.training.features import FeatureCacheError

USER_ERRORS = (BatchCaptionError, CacheWriteError, ConfigError, DatasetError, EncoderWeightsError, FeatureCacheError,
               ImageLoadError, ModelFileError, ResultsPageError, RunError)
